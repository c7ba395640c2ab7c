//! Admission control: whether a new connection may be accepted and upgraded, by rate (per
//! worker) and by count (in total, per source address, per user).
//!
//! Why it exists: a reconnect storm (19,000 viewers coming back at once) must not starve the
//! viewers who stayed, and one address or one user must not hold the whole server. These are
//! the pure checkers; the worker asks them at accept and at the upgrade and answers as
//! PROTOCOL.md says (503 at the upgrade or close 1013 past capacity). Each returns the HTTP
//! status of its refusal, so the mapping lives in the type.
//!
//! - [`AcceptPacer`]: a token bucket per worker (`limits.accept_rate` upgrades per second).
//!   When empty the worker leaves connections in the kernel's accept queue and retries after
//!   [`AcceptPacer::wait_ms`]; the queue (listen backlog 4096) is the waiting room.
//! - [`ConnGauge`]: the process-wide count against `limits.max_connections`; one atomic shared
//!   by the workers, touched only at accept and close, never per message. A [`ConnPermit`]
//!   releases its slot when dropped, so a connection cannot leak one.
//! - [`IpConns`]: connections per source address (IPv6 by /64, since one host owns a whole
//!   /64) against `limits.max_connections_per_ip`. An entry exists only while its address has a
//!   connection, so its memory is bounded by the connection count.
//! - [`UserConns`]: connections per user against `limits.max_connections_per_user`, with the
//!   policy [`PerUserPolicy`]: by default the *oldest* connection is closed (1008), because the
//!   newest is the tab the person is looking at and an old one is often a socket a phone left
//!   behind on another network; `refuse_newest` answers the new upgrade 429 instead. Kept by
//!   the home worker of the user's private room `user:<sub>`, which sees every connection of
//!   the user.
//!
//! Nothing here reads a clock, does IO or takes a lock.

use crate::ratelimit::{Bucket, Rate};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A refused connection: the HTTP status and reason to answer the upgrade with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// `limits.max_connections` reached: 503 (or close 1013 if already upgraded).
    #[error("server at capacity, try again later")]
    AtCapacity,
    /// `limits.max_connections_per_ip` reached: 429.
    #[error("too many connections from this address")]
    PerIp,
    /// `limits.max_connections_per_user` reached under `refuse_newest`: 429.
    #[error("too many connections for this user")]
    PerUser,
}

impl Refusal {
    /// The HTTP status to answer the upgrade with.
    pub fn http_status(self) -> u16 {
        match self {
            Self::AtCapacity => 503,
            Self::PerIp | Self::PerUser => 429,
        }
    }

    /// The close code when the connection is already a WebSocket (1013 try again later).
    pub fn close_code(self) -> u16 {
        1013
    }
}

/// Paces upgrades on one worker. See the module doc.
#[derive(Debug, Clone)]
pub struct AcceptPacer {
    rate: Rate,
    bucket: Bucket,
}

impl AcceptPacer {
    /// `per_s` upgrades per second, up to one second's worth at once; 0 = unpaced.
    pub fn new(per_s: u32, now_ms: u64) -> Self {
        let rate = Rate::new(per_s as f32, per_s as f32);
        Self { rate, bucket: Bucket::full(rate, now_ms) }
    }

    /// Whether one more connection may be accepted now.
    pub fn try_accept(&mut self, now_ms: u64) -> bool {
        self.bucket.try_take(self.rate, now_ms)
    }

    /// How long until [`AcceptPacer::try_accept`] can succeed (the worker's next accept
    /// attempt; 0 when it can now).
    pub fn wait_ms(&self, now_ms: u64) -> u64 {
        self.bucket.wait_ms(self.rate, now_ms)
    }
}

/// The process-wide connection count. See the module doc.
#[derive(Debug, Clone)]
pub struct ConnGauge {
    count: Arc<AtomicUsize>,
    max: usize,
}

/// One admitted connection's slot in a [`ConnGauge`]; released when dropped.
#[derive(Debug)]
pub struct ConnPermit {
    count: Arc<AtomicUsize>,
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ConnGauge {
    /// A gauge admitting at most `max` connections at once (0 = no limit; the shell resolves
    /// `limits.max_connections = 0` to the open-files limit before building it).
    pub fn new(max: usize) -> Self {
        Self { count: Arc::new(AtomicUsize::new(0)), max }
    }

    /// A slot, unless the gauge is full.
    pub fn try_admit(&self) -> Result<ConnPermit, Refusal> {
        let admitted = self
            .count
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| (self.max == 0 || n < self.max).then_some(n + 1));
        match admitted {
            Ok(_) => Ok(ConnPermit { count: Arc::clone(&self.count) }),
            Err(_) => Err(Refusal::AtCapacity),
        }
    }

    /// Connections admitted now.
    pub fn current(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Whether the gauge is at its maximum (`/readyz` answers 503 then).
    pub fn is_full(&self) -> bool {
        self.max != 0 && self.current() >= self.max
    }
}

/// The address key of [`IpConns`]: IPv4 as is, IPv6 by its /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpKey {
    /// An IPv4 address (or an IPv4-mapped IPv6 one).
    V4(u32),
    /// The upper 64 bits of an IPv6 address.
    V6Prefix(u64),
}

impl From<IpAddr> for IpKey {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self::V4(u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self::V4(u32::from(v4)),
                None => Self::V6Prefix((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

/// Connections per source address. See the module doc.
#[derive(Debug, Default)]
pub struct IpConns {
    max: u32,
    counts: HashMap<IpKey, u32>,
}

impl IpConns {
    /// At most `max` connections per address (0 = no limit, nothing is tracked).
    pub fn new(max: u32) -> Self {
        Self { max, counts: HashMap::new() }
    }

    /// Count a new connection from `ip`, unless the address is at its limit. Every `Ok` must
    /// be paired with one [`IpConns::release`].
    pub fn admit(&mut self, ip: IpAddr) -> Result<(), Refusal> {
        if self.max == 0 {
            return Ok(());
        }
        let n = self.counts.entry(IpKey::from(ip)).or_insert(0);
        if *n >= self.max {
            return Err(Refusal::PerIp);
        }
        *n += 1;
        Ok(())
    }

    /// A connection from `ip` is gone.
    pub fn release(&mut self, ip: IpAddr) {
        if self.max == 0 {
            return;
        }
        let key = IpKey::from(ip);
        if let Some(n) = self.counts.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.counts.remove(&key);
            }
        }
    }

    /// Addresses tracked (each has at least one connection).
    pub fn addresses(&self) -> usize {
        self.counts.len()
    }
}

/// What to do when a user is at `limits.max_connections_per_user`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PerUserPolicy {
    /// Admit the new connection and close the user's oldest with 1008.
    #[default]
    CloseOldest,
    /// Refuse the new upgrade with 429.
    RefuseNewest,
}

/// The decision of [`UserConns::admit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserAdmit<K> {
    /// Admitted.
    Admit,
    /// Admitted; close this older connection of the user with 1008
    /// ([`UserConns::EVICT_CLOSE_CODE`]).
    AdmitAndClose(K),
    /// Refused (429).
    Refuse(Refusal),
}

/// Connections per user, oldest first. `K` identifies a connection (e.g. `(WorkerId,
/// ConnId)`). See the module doc.
#[derive(Debug)]
pub struct UserConns<K> {
    max: usize,
    policy: PerUserPolicy,
    conns: HashMap<Arc<str>, Vec<K>>,
}

impl<K: Copy + PartialEq> UserConns<K> {
    /// The close code of a connection evicted by a newer one of the same user (policy).
    pub const EVICT_CLOSE_CODE: u16 = crate::wire::frame::close_code::POLICY;

    /// At most `max` connections per user (0 = no limit, nothing tracked) under `policy`.
    pub fn new(max: usize, policy: PerUserPolicy) -> Self {
        Self { max, policy, conns: HashMap::new() }
    }

    /// Count connection `key` of `user`. Connections must be admitted in the order they
    /// were opened; every admitted key must be [`UserConns::release`]d once (an evicted one
    /// too, when its close completes: releasing a key that is no longer counted is a no-op).
    pub fn admit(&mut self, user: &Arc<str>, key: K) -> UserAdmit<K> {
        if self.max == 0 {
            return UserAdmit::Admit;
        }
        let list = self.conns.entry(Arc::clone(user)).or_default();
        if list.len() < self.max {
            list.push(key);
            return UserAdmit::Admit;
        }
        match self.policy {
            PerUserPolicy::RefuseNewest => UserAdmit::Refuse(Refusal::PerUser),
            PerUserPolicy::CloseOldest => {
                let oldest = list.remove(0);
                list.push(key);
                UserAdmit::AdmitAndClose(oldest)
            }
        }
    }

    /// Connection `key` of `user` is gone.
    pub fn release(&mut self, user: &str, key: K) {
        if let Some(list) = self.conns.get_mut(user) {
            list.retain(|k| *k != key);
            if list.is_empty() {
                self.conns.remove(user);
            }
        }
    }

    /// Connections counted for `user`.
    pub fn count(&self, user: &str) -> usize {
        self.conns.get(user).map_or(0, Vec::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pacer_admits_a_second_of_burst_then_the_rate() {
        let mut p = AcceptPacer::new(100, 0);
        assert_eq!((0..300).filter(|_| p.try_accept(0)).count(), 100);
        assert_eq!(p.wait_ms(0), 10);
        assert!(p.try_accept(10));
        let mut off = AcceptPacer::new(0, 0);
        assert!((0..10_000).all(|_| off.try_accept(0)));
    }

    #[test]
    fn the_gauge_refuses_past_max_and_permits_release_on_drop() {
        let g = ConnGauge::new(2);
        let a = g.try_admit().expect("1");
        let _b = g.try_admit().expect("2");
        assert_eq!(g.try_admit().map(|_| ()), Err(Refusal::AtCapacity));
        assert!(g.is_full());
        drop(a);
        assert!(g.try_admit().is_ok());
        assert_eq!(Refusal::AtCapacity.http_status(), 503);
        let unlimited = ConnGauge::new(0);
        let permits: Vec<_> = (0..1000).map(|_| unlimited.try_admit().expect("no limit")).collect();
        assert_eq!(unlimited.current(), permits.len());
    }

    #[test]
    fn per_ip_counts_v4_and_v6_prefixes_and_forgets_idle_addresses() {
        let mut ips = IpConns::new(2);
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        assert!(ips.admit(a).is_ok() && ips.admit(a).is_ok());
        assert_eq!(ips.admit(a), Err(Refusal::PerIp));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().expect("ip");
        assert_eq!(ips.admit(mapped), Err(Refusal::PerIp), "IPv4-mapped is the same host");
        let v6a: IpAddr = "2001:db8:1:2::1".parse().expect("ip");
        let v6b: IpAddr = "2001:db8:1:2:ffff::9".parse().expect("ip");
        assert!(ips.admit(v6a).is_ok() && ips.admit(v6b).is_ok());
        assert_eq!(ips.admit(v6a), Err(Refusal::PerIp), "same /64");
        assert!(ips.admit("2001:db8:1:3::1".parse().expect("ip")).is_ok(), "another /64");
        ips.release(a);
        ips.release(a);
        ips.release(a);
        assert_eq!(ips.addresses(), 2, "an address without connections is forgotten");
    }

    #[test]
    fn per_user_closes_the_oldest_or_refuses_the_newest() {
        let alice: Arc<str> = "alice".into();
        let mut users = UserConns::new(2, PerUserPolicy::CloseOldest);
        assert_eq!(users.admit(&alice, 1), UserAdmit::Admit);
        assert_eq!(users.admit(&alice, 2), UserAdmit::Admit);
        assert_eq!(users.admit(&alice, 3), UserAdmit::AdmitAndClose(1));
        users.release("alice", 1);
        assert_eq!(users.count("alice"), 2);
        users.release("alice", 2);
        users.release("alice", 3);
        assert_eq!(users.count("alice"), 0);
        let mut strict = UserConns::new(1, PerUserPolicy::RefuseNewest);
        assert_eq!(strict.admit(&alice, 1), UserAdmit::Admit);
        assert_eq!(strict.admit(&alice, 2), UserAdmit::Refuse(Refusal::PerUser));
        assert_eq!(Refusal::PerUser.http_status(), 429);
    }
}
