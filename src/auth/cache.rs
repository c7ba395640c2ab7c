//! A bounded cache of recently verified tokens, one per worker.
//!
//! Why it exists: an asymmetric signature check costs tens of microseconds (BENCHMARKS.md),
//! about a TLS handshake; a reconnect storm is mostly the same viewers with the same tokens,
//! so each worker remembers what it verified. Entries are keyed by the SHA-256 of the token
//! (the token itself is never stored, and a 256-bit hash cannot be made to collide), hold the
//! shared claims, and stop answering once the claims expire. At capacity the oldest insertion
//! goes first: tokens are looked up when a viewer (re)connects, so insertion order is close
//! to use order, and a hit needs no bookkeeping (no LRU list to reorder). It must never grow
//! past its capacity nor hand out expired claims.

use super::claims::Claims;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// The cache key: SHA-256 of the token.
pub type TokenHash = [u8; 32];

/// See the module doc.
#[derive(Debug)]
pub struct TokenCache {
    capacity: usize,
    entries: HashMap<TokenHash, Arc<Claims>>,
    /// Keys in insertion order; may hold keys already removed (skipped on eviction).
    order: VecDeque<TokenHash>,
}

impl TokenCache {
    /// A cache of at most `capacity` tokens (0 turns caching off).
    pub fn new(capacity: usize) -> Self {
        Self { capacity, entries: HashMap::new(), order: VecDeque::new() }
    }

    /// The key of `token`.
    pub fn key(token: &str) -> TokenHash {
        let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
        let mut key = [0u8; 32];
        key.copy_from_slice(digest.as_ref());
        key
    }

    /// The claims cached for `key`, unless expired at `now_s` with `leeway_s` (an expired
    /// entry is dropped).
    pub fn get(&mut self, key: &TokenHash, now_s: u64, leeway_s: u64) -> Option<Arc<Claims>> {
        let claims = self.entries.get(key)?;
        if claims.expired(now_s, leeway_s) {
            self.entries.remove(key);
            return None;
        }
        Some(Arc::clone(claims))
    }

    /// Remember `claims` for `key`, evicting the oldest entries beyond the capacity.
    pub fn insert(&mut self, key: TokenHash, claims: Arc<Claims>) {
        if self.capacity == 0 {
            return;
        }
        if self.entries.insert(key, claims).is_none() {
            self.order.push_back(key);
        }
        while self.entries.len() > self.capacity {
            let Some(oldest) = self.order.pop_front() else { break };
            self.entries.remove(&oldest);
        }
        // Keys of entries dropped on expiry linger in `order`; compact when they dominate so
        // its memory stays proportional to the capacity.
        if self.order.len() > 2 * self.capacity {
            let entries = &self.entries;
            self.order.retain(|k| entries.contains_key(k));
        }
    }

    /// Tokens cached.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(sub: &str, exp: u64) -> Arc<Claims> {
        let mut c = Claims::development(sub.into());
        c.exp = exp;
        Arc::new(c)
    }

    #[test]
    fn hits_until_expiry_then_misses() {
        let mut cache = TokenCache::new(4);
        let k = TokenCache::key("t1");
        cache.insert(k, claims("a", 100));
        assert_eq!(cache.get(&k, 105, 5).map(|c| c.sub.clone()), Some("a".into()));
        assert!(cache.get(&k, 106, 5).is_none(), "expired beyond the leeway");
        assert!(cache.is_empty(), "an expired entry is dropped");
        assert!(cache.get(&TokenCache::key("t2"), 0, 0).is_none());
    }

    #[test]
    fn never_exceeds_capacity_and_evicts_the_oldest() {
        let mut cache = TokenCache::new(3);
        for i in 0..10u64 {
            cache.insert(TokenCache::key(&i.to_string()), claims("u", 1_000));
            assert!(cache.len() <= 3);
        }
        assert!(cache.get(&TokenCache::key("6"), 0, 0).is_none());
        assert!(cache.get(&TokenCache::key("9"), 0, 0).is_some());
        // Expired entries leave stale keys in the order list; it stays bounded.
        for i in 0..100u64 {
            let k = TokenCache::key(&format!("x{i}"));
            cache.insert(k, claims("u", 10));
            let _ = cache.get(&k, 1_000, 0);
        }
        assert!(cache.order.len() <= 2 * 3 + 1);
        assert!(TokenCache::new(0).entries.is_empty());
    }

    #[test]
    fn the_key_is_the_sha256_of_the_token() {
        let k = TokenCache::key("abc");
        assert_eq!(k[..4], [0xba, 0x78, 0x16, 0xbf], "FIPS 180-2 test vector");
    }
}
