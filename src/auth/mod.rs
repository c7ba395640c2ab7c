//! Who a viewer is and what it may do: JWT verification at the upgrade, typed claims the
//! session carries, per-action checks, and a cache that makes a reconnect storm of the same
//! viewers cheap.
//!
//! Why it exists: PROTOCOL.md ("Viewer connection") has identity come from a JWT whose claims
//! (`sub`, `exp`, `name`, `rooms`, `comment`, `admin`) decide every join, comment and reaction.
//! The worker calls [`Authenticator::authenticate`] on the token the upgrade parser found and
//! answers 401 on an error; the session keeps the [`Claims`] (one `Arc`, 8 bytes per
//! connection) in a [`Guard`], with its rate-limit buckets, and asks it before each action
//! ([`Guard::check_join`], [`Guard::check_comment`], ...).
//!
//! Crates: token parsing, the header's `alg` against the key's, and the `iss`/`aud` checks are
//! `jsonwebtoken` (the most used Rust JWT crate, maintained since 2015); its signature
//! primitives are `ring` (already in the tree through rustls), plugged in as jsonwebtoken's
//! `CryptoProvider` by [`ring_provider`] because ring verifies ES256 about 7 times faster
//! than jsonwebtoken's RustCrypto backend and RS256 about 15 times faster (the measured
//! figures are in that module's doc). jsonwebtoken is pinned to 10.3 because 10.4 needs Rust 1.88 and
//! the workspace promises 1.85. The cache's token hash is SHA-256 from `ring` too.
//!
//! What it must never do: read a clock (`now` is a parameter; jsonwebtoken's own `exp`/`nbf`
//! checks, which read the system clock, are turned off and done here), open a socket or start a
//! thread, or put a token (or a part of one) into an error, a log line or a `Debug` output.
//! The one IO it does is reading key files, once, at startup ([`keys::KeySet::load`]).

pub mod cache;
pub mod claims;
pub mod guard;
pub mod keys;
pub mod mint;
mod ring_provider;
pub mod verifier;

pub use cache::TokenCache;
pub use claims::{Claims, Denied, RoomPatterns};
pub use guard::{Guard, Identity, Refused};
pub use keys::{KeyError, KeySet};
pub use verifier::{Rules, Verifier};

use crate::wire::ErrorCode;
use std::sync::Arc;

/// Longest token accepted, in bytes; longer ones are refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 4096;

/// Why a token was refused. `Display` says why for people and logs and never contains the
/// token. At the upgrade every variant is HTTP 401 ([`AuthError::HTTP_STATUS`]); on `refresh`
/// it is an `error` reply with code `unauthorized` ([`AuthError::error_code`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Auth is configured and the upgrade carried no token.
    #[error("no token: give one in ?token=, Authorization: Bearer, or Sec-WebSocket-Protocol bearer.<token>")]
    Missing,
    /// Over [`MAX_TOKEN_BYTES`].
    #[error("token longer than {MAX_TOKEN_BYTES} bytes")]
    TooLong,
    /// Not a JWT: wrong number of parts, bad base64, header or claims not JSON.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// The header's `alg` is not one a configured key verifies.
    #[error("token algorithm {0} is not accepted here (configured keys verify: {1})")]
    AlgorithmNotAllowed(&'static str, String),
    /// No configured key verifies the signature.
    #[error("bad signature: no configured key verifies it")]
    BadSignature,
    /// `exp` is in the past (beyond the leeway).
    #[error("token expired at {exp} (now {now}, leeway {leeway_s} s)")]
    Expired {
        /// The token's `exp`, seconds since the epoch.
        exp: u64,
        /// The verifier's `now`, seconds since the epoch.
        now: u64,
        /// The configured leeway.
        leeway_s: u64,
    },
    /// `nbf` is in the future (beyond the leeway).
    #[error("token not valid before {nbf} (now {now})")]
    NotYetValid {
        /// The token's `nbf`.
        nbf: u64,
        /// The verifier's `now`.
        now: u64,
    },
    /// `iss` is missing or not the configured issuer.
    #[error("wrong or missing issuer (iss)")]
    WrongIssuer,
    /// `aud` is missing or does not name the configured audience (or names one where none is
    /// configured).
    #[error("wrong or missing audience (aud)")]
    WrongAudience,
    /// A claim roomcast needs is missing or malformed.
    #[error("claim `{claim}` {why}")]
    BadClaim {
        /// The claim's name.
        claim: &'static str,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A `refresh` brought a token for another user.
    #[error("refresh token is for another user (sub differs)")]
    SubjectChanged,
}

impl AuthError {
    /// The HTTP status of a refused upgrade.
    pub const HTTP_STATUS: u16 = 401;

    /// The `error` code of a refused `refresh`.
    pub fn error_code(&self) -> ErrorCode {
        ErrorCode::Unauthorized
    }
}

/// The outcome of [`Authenticator::authenticate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authenticated {
    /// A verified token's claims.
    Verified(Arc<Claims>),
    /// No auth key is configured (the development default): the caller names the user from
    /// `?user=` (or makes one up) and uses [`Claims::development`].
    Development,
}

/// One worker's view of auth: the shared [`Verifier`] (none when no key is configured) and
/// the worker's own [`TokenCache`]. Owned by the worker thread; no locks.
#[derive(Debug)]
pub struct Authenticator {
    verifier: Option<Arc<Verifier>>,
    cache: TokenCache,
}

impl Authenticator {
    /// An authenticator; `verifier` is `None` when no key is configured.
    pub fn new(verifier: Option<Arc<Verifier>>, cache_capacity: usize) -> Self {
        Self { verifier, cache: TokenCache::new(cache_capacity) }
    }

    /// Whether tokens are required (a key is configured).
    pub fn required(&self) -> bool {
        self.verifier.is_some()
    }

    /// The verifier, when a key is configured.
    pub fn verifier(&self) -> Option<&Verifier> {
        self.verifier.as_deref()
    }

    /// Decide on the token an upgrade carried (`now_ms`: the worker's clock). With no key
    /// configured any token is ignored and the answer is [`Authenticated::Development`]. A cache hit
    /// costs one SHA-256 of the token; a miss verifies the signature and caches the claims
    /// until they expire.
    pub fn authenticate(&mut self, token: Option<&str>, now_ms: u64) -> Result<Authenticated, AuthError> {
        let Some(verifier) = &self.verifier else { return Ok(Authenticated::Development) };
        let token = token.ok_or(AuthError::Missing)?;
        verifier.verify_cached(&mut self.cache, token, now_ms / 1000).map(Authenticated::Verified)
    }

    /// Decide on a `refresh` op's token for a session holding `current`: the new token must be
    /// valid and carry the same `sub`. With no key configured the current claims stay.
    pub fn refresh(&mut self, current: &Arc<Claims>, token: &str, now_ms: u64) -> Result<Arc<Claims>, AuthError> {
        let Some(verifier) = &self.verifier else { return Ok(Arc::clone(current)) };
        let fresh = verifier.verify_cached(&mut self.cache, token, now_ms / 1000)?;
        if fresh.sub != current.sub {
            return Err(AuthError::SubjectChanged);
        }
        Ok(fresh)
    }

    /// When a session holding `claims` must be closed with 4001 unless refreshed, in ms since
    /// the epoch (`exp` plus the leeway); `None` when it never expires.
    pub fn deadline_ms(&self, claims: &Claims) -> Option<u64> {
        let leeway_s = self.verifier.as_ref().map_or(0, |v| v.rules().leeway_s);
        claims.deadline_ms(leeway_s)
    }

    /// Entries in the cache (for metrics).
    pub fn cached(&self) -> usize {
        self.cache.len()
    }
}

#[cfg(test)]
mod tests;
