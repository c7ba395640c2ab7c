//! The keys tokens are verified with, loaded once at startup from the configuration
//! (`auth.hmac_secret`, `auth.public_keys`).
//!
//! Why it exists: key material comes from files (a secret behind `@path`, PEM public keys) and
//! each key fixes the one algorithm it verifies, so a token cannot choose a weaker one
//! ("algorithm confusion": an RSA public key is never used as an HMAC secret). This is the
//! only part of `auth` that does IO, and only here at startup; it must never be called per
//! connection, and never log or return key bytes.
//!
//! Algorithms: an HMAC secret verifies HS256; a PEM file verifies ES256 (EC P-256), RS256
//! (RSA) or EdDSA (Ed25519), whichever its key type is. A public key's `kid` is its file name
//! without the extension (`keys/2026-12.pem` -> `2026-12`), so rotating keys is adding a file
//! and restarting; a token whose `kid` names a key is verified with that key only.

use jsonwebtoken::{Algorithm, DecodingKey};
use std::path::{Path, PathBuf};

/// Shortest HMAC secret accepted: RFC 7518 3.2 says "A key of the same size as the hash output
/// (for instance, 256 bits for "HS256") or larger MUST be used with this algorithm."
pub const MIN_HMAC_SECRET_BYTES: usize = 32;

/// A key that cannot be used; the message names the key's source, never its bytes.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A key file could not be read.
    #[error("cannot read key file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The HMAC secret is too short.
    #[error("auth.hmac_secret: must be at least {MIN_HMAC_SECRET_BYTES} bytes (got {0}); RFC 7518 3.2")]
    WeakSecret(usize),
    /// A PEM file holds no public key of a supported type.
    #[error("{0}: not a PEM public key of a supported type (EC P-256, RSA or Ed25519 `BEGIN PUBLIC KEY`)")]
    NotAPublicKey(PathBuf),
}

/// One key and the algorithm it verifies.
pub(crate) struct VerifyKey {
    /// The key's id (a public key's file stem); `None` for the HMAC secret.
    pub(crate) kid: Option<Box<str>>,
    /// The one algorithm this key verifies.
    pub(crate) alg: Algorithm,
    /// The key.
    pub(crate) key: DecodingKey,
}

impl std::fmt::Debug for VerifyKey {
    // Never print key bytes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyKey").field("kid", &self.kid).field("alg", &self.alg).finish_non_exhaustive()
    }
}

/// Every configured key. Empty means auth is off (the development default).
#[derive(Debug, Default)]
pub struct KeySet {
    pub(crate) keys: Vec<VerifyKey>,
}

/// Resolve a secret given as text or as `@path` (the file's content, trailing newline
/// removed), so secrets can stay out of the config file and the process arguments.
pub fn read_secret(value: &str) -> Result<Vec<u8>, KeyError> {
    let Some(path) = value.strip_prefix('@') else { return Ok(value.as_bytes().to_vec()) };
    let mut bytes = std::fs::read(path).map_err(|source| KeyError::Read { path: path.into(), source })?;
    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        bytes.pop();
    }
    Ok(bytes)
}

impl KeySet {
    /// Load the HMAC secret (text or `@path`) and the PEM public keys. Startup only.
    pub fn load(hmac_secret: Option<&str>, public_keys: &[PathBuf]) -> Result<Self, KeyError> {
        let mut set = Self::default();
        if let Some(secret) = hmac_secret {
            set.add_hmac_secret(&read_secret(secret)?)?;
        }
        for path in public_keys {
            let pem = std::fs::read(path).map_err(|source| KeyError::Read { path: path.clone(), source })?;
            set.add_public_pem(&pem, path)?;
        }
        Ok(set)
    }

    /// Add an HS256 secret.
    pub fn add_hmac_secret(&mut self, secret: &[u8]) -> Result<(), KeyError> {
        if secret.len() < MIN_HMAC_SECRET_BYTES {
            return Err(KeyError::WeakSecret(secret.len()));
        }
        self.keys.push(VerifyKey { kid: None, alg: Algorithm::HS256, key: DecodingKey::from_secret(secret) });
        Ok(())
    }

    /// Add a PEM public key read from `path` (the path names the key in errors and gives its
    /// `kid`).
    pub fn add_public_pem(&mut self, pem: &[u8], path: &Path) -> Result<(), KeyError> {
        let kid = path.file_stem().and_then(|s| s.to_str()).map(Box::from);
        let (alg, key) = if let Ok(key) = DecodingKey::from_ec_pem(pem) {
            (Algorithm::ES256, key)
        } else if let Ok(key) = DecodingKey::from_ed_pem(pem) {
            (Algorithm::EdDSA, key)
        } else if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
            (Algorithm::RS256, key)
        } else {
            return Err(KeyError::NotAPublicKey(path.to_owned()));
        };
        self.keys.push(VerifyKey { kid, alg, key });
        Ok(())
    }

    /// Whether no key is configured (auth off).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The algorithms the keys verify, e.g. `HS256, ES256` (for logs and errors).
    pub fn algorithms(&self) -> String {
        let mut algs: Vec<&str> = Vec::new();
        for k in &self.keys {
            let name = alg_name(k.alg);
            if !algs.contains(&name) {
                algs.push(name);
            }
        }
        algs.join(", ")
    }

    /// A one-line description for the startup log: algorithms and key ids, no key bytes.
    pub fn describe(&self) -> String {
        let kids: Vec<&str> = self.keys.iter().filter_map(|k| k.kid.as_deref()).collect();
        format!("{} key(s) ({}); kids: [{}]", self.keys.len(), self.algorithms(), kids.join(", "))
    }
}

/// The JOSE name of an algorithm.
pub(crate) fn alg_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::EdDSA => "EdDSA",
    }
}
