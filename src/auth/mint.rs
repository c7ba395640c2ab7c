//! Making tokens, for development (`roomcast token`), tests and benches.
//!
//! Why it exists: a platform's own identity service mints production tokens; a developer
//! needs one in a line, and tests need every algorithm the verifier accepts. The claims are
//! the ones PROTOCOL.md names. It must never read a clock (`now_s` is a parameter) and is not
//! used by the server.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

/// What goes into a token.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TokenSpec {
    /// `sub`: the user id.
    pub sub: String,
    /// `name`: display name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `rooms`: patterns (`*`, `live-*`, exact names).
    pub rooms: Vec<String>,
    /// `comment`: may comment and react.
    pub comment: bool,
    /// `admin`: operator rights.
    pub admin: bool,
    /// `iss`, when set.
    #[serde(skip_serializing_if = "Option::is_none", rename = "iss")]
    pub issuer: Option<String>,
    /// `aud`, when set.
    #[serde(skip_serializing_if = "Option::is_none", rename = "aud")]
    pub audience: Option<String>,
    /// Lifetime in seconds (`exp` = now + ttl).
    #[serde(skip)]
    pub ttl_s: u64,
    /// `kid` header, when set.
    #[serde(skip)]
    pub kid: Option<String>,
}

/// The key a token is signed with.
pub struct SigningKey {
    alg: Algorithm,
    key: EncodingKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey").field("alg", &self.alg).finish_non_exhaustive()
    }
}

/// Why a token could not be made.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    /// `--alg` names an algorithm this tool does not sign with.
    #[error("unsupported algorithm {0:?}: use HS256 (with a secret), ES256, RS256 or EdDSA (with a PEM key)")]
    Algorithm(String),
    /// The PEM file is not a private key of the algorithm's type.
    #[error("the key is not a PKCS#8 PEM private key for {0}")]
    Key(&'static str),
    /// The signer failed.
    #[error("signing failed: {0}")]
    Sign(String),
}

#[derive(Serialize)]
struct Payload<'a> {
    #[serde(flatten)]
    spec: &'a TokenSpec,
    exp: u64,
    iat: u64,
}

impl SigningKey {
    /// An HS256 key from a secret.
    pub fn hmac(secret: &[u8]) -> Self {
        super::ring_provider::install();
        Self { alg: Algorithm::HS256, key: EncodingKey::from_secret(secret) }
    }

    /// A key for `alg` (`ES256`, `RS256` or `EdDSA`) from a PKCS#8 PEM private key.
    pub fn from_pem(alg: &str, pem: &[u8]) -> Result<Self, MintError> {
        super::ring_provider::install();
        let (alg, key) = match alg {
            "ES256" => (Algorithm::ES256, EncodingKey::from_ec_pem(pem).map_err(|_| MintError::Key("ES256"))?),
            "RS256" => (Algorithm::RS256, EncodingKey::from_rsa_pem(pem).map_err(|_| MintError::Key("RS256"))?),
            "EdDSA" => (Algorithm::EdDSA, EncodingKey::from_ed_pem(pem).map_err(|_| MintError::Key("EdDSA"))?),
            other => return Err(MintError::Algorithm(other.to_owned())),
        };
        Ok(Self { alg, key })
    }
}

/// A signed token for `spec`, issued at `now_s`.
pub fn mint(spec: &TokenSpec, key: &SigningKey, now_s: u64) -> Result<String, MintError> {
    let mut header = Header::new(key.alg);
    header.kid = spec.kid.clone();
    let payload = Payload { spec, exp: now_s.saturating_add(spec.ttl_s), iat: now_s };
    jsonwebtoken::encode(&header, &payload, &key.key).map_err(|e| MintError::Sign(e.to_string()))
}
