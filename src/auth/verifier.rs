//! Token verification: signature with the configured keys, `iss`/`aud` when configured, then
//! the claims against `now` and the leeway.
//!
//! Why it exists: one immutable, `Send + Sync` value built at startup and shared by every
//! worker (`Arc<Verifier>`); each worker pairs it with its own [`TokenCache`], so verifying
//! takes no lock. jsonwebtoken checks the signature, the header's `alg` against the key's
//! and `iss`/`aud`; its clock-reading `exp`/`nbf` checks are off, and [`RawClaims::check`]
//! does them with the caller's `now`. It must never read a clock or keep per-token state.

use super::cache::TokenCache;
use super::claims::{Claims, RawClaims};
use super::keys::{alg_name, KeySet, VerifyKey};
use super::{AuthError, MAX_TOKEN_BYTES};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use std::collections::HashSet;
use std::sync::Arc;

/// What a token must satisfy besides its signature (`auth.issuer`, `auth.audience`,
/// `auth.leeway_s`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Required `aud` (the token's `aud` must name it), when set.
    pub audience: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    pub leeway_s: u64,
}

impl Default for Rules {
    fn default() -> Self {
        Self { issuer: None, audience: None, leeway_s: 5 }
    }
}

/// Verifies tokens with a [`KeySet`] and [`Rules`]. See the module doc.
#[derive(Debug)]
pub struct Verifier {
    keys: KeySet,
    rules: Rules,
    /// jsonwebtoken's checks for each algorithm that has a key (signature, `iss`, `aud`).
    validations: Vec<(Algorithm, Validation)>,
}

fn validation(alg: Algorithm, rules: &Rules) -> Validation {
    let mut v = Validation::new(alg);
    // Done in `RawClaims::check` with the caller's `now`: jsonwebtoken would read the clock.
    v.validate_exp = false;
    v.validate_nbf = false;
    v.required_spec_claims = HashSet::new();
    if let Some(iss) = &rules.issuer {
        v.set_issuer(&[iss]);
        v.required_spec_claims.insert("iss".to_owned());
    }
    if let Some(aud) = &rules.audience {
        v.set_audience(&[aud]);
        v.required_spec_claims.insert("aud".to_owned());
    }
    v
}

impl Verifier {
    /// A verifier for `keys` (must not be empty: no keys means auth is off, and then there is
    /// no verifier) under `rules`.
    pub fn new(keys: KeySet, rules: Rules) -> Self {
        super::ring_provider::install();
        let mut validations: Vec<(Algorithm, Validation)> = Vec::new();
        for k in &keys.keys {
            if !validations.iter().any(|(a, _)| *a == k.alg) {
                validations.push((k.alg, validation(k.alg, &rules)));
            }
        }
        Self { keys, rules, validations }
    }

    /// The rules tokens are held to.
    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// The keys (for the startup log: [`KeySet::describe`]).
    pub fn keys(&self) -> &KeySet {
        &self.keys
    }

    /// Verify `token` at `now_s` (seconds since the epoch) without the cache.
    pub fn verify(&self, token: &str, now_s: u64) -> Result<Claims, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::TooLong);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| map_error(e.kind()))?;
        let Some((_, validation)) = self.validations.iter().find(|(a, _)| *a == header.alg) else {
            return Err(AuthError::AlgorithmNotAllowed(alg_name(header.alg), self.keys.algorithms()));
        };
        let candidates = || self.keys.keys.iter().filter(|k| k.alg == header.alg);
        let by_kid: Vec<&VerifyKey> = match header.kid.as_deref() {
            Some(kid) => candidates().filter(|k| k.kid.as_deref() == Some(kid)).collect(),
            None => Vec::new(),
        };
        let chosen: Vec<&VerifyKey> = if by_kid.is_empty() { candidates().collect() } else { by_kid };
        let mut last = AuthError::BadSignature;
        for key in chosen {
            match jsonwebtoken::decode::<RawClaims>(token, &key.key, validation) {
                Ok(data) => return data.claims.check(now_s, self.rules.leeway_s),
                // Another key (rotation) may verify it.
                Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature | ErrorKind::InvalidEcdsaKey) => {}
                Err(e) => last = map_error(e.kind()),
            }
        }
        Err(last)
    }

    /// Verify `token` at `now_s`, answering from `cache` when it verified the same token
    /// before and its claims have not expired; a fresh verification is cached.
    pub fn verify_cached(&self, cache: &mut TokenCache, token: &str, now_s: u64) -> Result<Arc<Claims>, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::TooLong);
        }
        let key = TokenCache::key(token);
        if let Some(claims) = cache.get(&key, now_s, self.rules.leeway_s) {
            return Ok(claims);
        }
        let claims = Arc::new(self.verify(token, now_s)?);
        cache.insert(key, Arc::clone(&claims));
        Ok(claims)
    }
}

/// jsonwebtoken's error as ours; never carries token bytes.
fn map_error(kind: &ErrorKind) -> AuthError {
    match kind {
        ErrorKind::InvalidSignature | ErrorKind::InvalidEcdsaKey | ErrorKind::InvalidEddsaKey => {
            AuthError::BadSignature
        }
        ErrorKind::InvalidRsaKey(_) | ErrorKind::InvalidKeyFormat => AuthError::BadSignature,
        ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
        ErrorKind::InvalidAudience => AuthError::WrongAudience,
        ErrorKind::MissingRequiredClaim(claim) if claim == "iss" => AuthError::WrongIssuer,
        ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => AuthError::WrongAudience,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName | ErrorKind::MissingAlgorithm => {
            AuthError::Malformed("unknown or missing alg")
        }
        ErrorKind::Base64(_) => AuthError::Malformed("not base64url"),
        ErrorKind::Json(_) => AuthError::Malformed("header or claims are not a JSON object"),
        ErrorKind::Utf8(_) => AuthError::Malformed("not UTF-8"),
        _ => AuthError::Malformed("not a JWT (header.claims.signature)"),
    }
}
