//! Viewer tokens for a server that requires JWTs (`--jwt-secret`): one HS256 token per
//! connection with the claims PROTOCOL.md names: `sub` (the connection's user id), `rooms`
//! (`["*"]`: every room), `comment: true` and `exp` one hour ahead, sent as `?token=`.
//!
//! Signing uses the `jsonwebtoken` crate (the de-facto JWT crate, the one the server uses to
//! verify) rather than hand-rolled HMAC and base64. Tokens are minted before a connection is
//! opened, never inside the event loop's read path; a secret is never printed.

use serde::Serialize;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long a minted token is valid.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

/// The claims of a loadgen viewer.
#[derive(Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// Room patterns it may join.
    pub rooms: Vec<String>,
    /// May comment in the rooms it may join.
    pub comment: bool,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
}

/// Why a token could not be made.
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    /// The signing library refused.
    #[error("signing a viewer token: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
}

/// Mints viewer tokens with one secret.
#[derive(Clone)]
pub struct Minter {
    key: jsonwebtoken::EncodingKey,
}

impl std::fmt::Debug for Minter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Minter { key: <secret> }")
    }
}

impl Minter {
    /// A minter signing with the HS256 `secret`.
    pub fn hs256(secret: &str) -> Self {
        Self { key: jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()) }
    }

    /// A token for `user`, valid for [`TOKEN_LIFETIME`] from now.
    pub fn token(&self, user: &str) -> Result<String, JwtError> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let claims = Claims {
            sub: user.to_owned(),
            rooms: vec!["*".into()],
            comment: true,
            exp: (now + TOKEN_LIFETIME).as_secs(),
        };
        Ok(jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256), &claims, &self.key)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};

    #[test]
    fn a_token_carries_the_viewer_claims_and_verifies_with_the_secret() {
        let token = Minter::hs256("s3cret").token("lg7").expect("signs");
        let data = decode::<Claims>(&token, &DecodingKey::from_secret(b"s3cret"), &Validation::new(Algorithm::HS256))
            .expect("verifies with the same secret");
        assert_eq!(data.header.alg, Algorithm::HS256);
        let c = data.claims;
        assert_eq!((c.sub.as_str(), c.rooms, c.comment), ("lg7", vec!["*".to_owned()], true));
        let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs();
        assert!((now + 3590..=now + 3610).contains(&c.exp), "exp is an hour ahead: {} vs {now}", c.exp);
        let wrong = decode::<Claims>(&token, &DecodingKey::from_secret(b"other"), &Validation::new(Algorithm::HS256));
        assert!(wrong.is_err(), "another secret does not verify it");
        assert!(token.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)), "URL-safe as is: {token}");
    }
}
