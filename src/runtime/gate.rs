//! The connection caps every worker shares: the process's total (`limits.max_connections`),
//! per source address (`limits.max_connections_per_ip`) and per user
//! (`limits.max_connections_per_user`), and whether the server is under load.
//!
//! Workers ask it when they accept a socket and when a connection goes, never per message:
//! the total is one atomic; the per-address and per-user tables sit behind mutexes that only
//! an accept, an upgrade or a close takes, and only when that cap is configured. The decisions
//! themselves (what a refusal answers, which connection a full user loses) are
//! [`crate::admission`]'s; the shard reaches the per-user part through
//! [`crate::shard::Admission`].

use crate::admission::{IpConns, PerUserPolicy, Refusal, UserAdmit, UserConns};
use crate::shard::mail::Origin;
use crate::shard::Admission;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// A share of `max` past which the server counts as under load (new clients are told a wider
/// reconnect window).
const LOAD_NUMERATOR: usize = 9;
const LOAD_DENOMINATOR: usize = 10;

/// See the module doc.
#[derive(Debug)]
pub struct Gate {
    open: AtomicUsize,
    max: usize,
    ips: Option<Mutex<IpConns>>,
    users: Option<Mutex<UserConns<Origin>>>,
    /// Some worker is pacing its accepts (a reconnect storm).
    pacing: AtomicBool,
}

impl Gate {
    /// Caps: `max` connections in all (0: none), `per_ip` per source address and `per_user`
    /// per user (0: none), with `policy` for a user at its cap.
    pub fn new(max: usize, per_ip: u32, per_user: u32, policy: PerUserPolicy) -> Self {
        Self {
            open: AtomicUsize::new(0),
            max: if max == 0 { usize::MAX } else { max },
            ips: (per_ip > 0).then(|| Mutex::new(IpConns::new(per_ip))),
            users: (per_user > 0).then(|| Mutex::new(UserConns::new(per_user as usize, policy))),
            pacing: AtomicBool::new(false),
        }
    }

    /// A socket was accepted from `ip`: may it stay? (503 at the total, 429 per address.)
    pub fn admit(&self, ip: IpAddr) -> Result<(), Refusal> {
        if self.open.fetch_add(1, Ordering::Relaxed) >= self.max {
            self.open.fetch_sub(1, Ordering::Relaxed);
            return Err(Refusal::AtCapacity);
        }
        if let Some(ips) = &self.ips {
            let admitted = ips.lock().map_or(Ok(()), |mut ips| ips.admit(ip));
            if let Err(refusal) = admitted {
                self.open.fetch_sub(1, Ordering::Relaxed);
                return Err(refusal);
            }
        }
        Ok(())
    }

    /// Whether per-address counting is on (the worker then remembers each socket's address).
    pub fn counts_addresses(&self) -> bool {
        self.ips.is_some()
    }

    /// An admitted socket from `ip` is gone (`ip` is `None` when addresses are not counted).
    pub fn release(&self, ip: Option<IpAddr>) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        if let (Some(ips), Some(ip)) = (&self.ips, ip) {
            if let Ok(mut ips) = ips.lock() {
                ips.release(ip);
            }
        }
    }

    /// A worker started or stopped pacing its accepts.
    pub fn set_pacing(&self, pacing: bool) {
        self.pacing.store(pacing, Ordering::Relaxed);
    }

    /// Connections admitted and not yet gone.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Whether no more connections are admitted.
    pub fn at_capacity(&self) -> bool {
        self.open() >= self.max
    }
}

impl Admission for Gate {
    fn admit_user(&self, user: &Arc<str>, conn: Origin) -> UserAdmit<Origin> {
        match &self.users {
            None => UserAdmit::Admit,
            Some(users) => users.lock().map_or(UserAdmit::Admit, |mut users| users.admit(user, conn)),
        }
    }

    fn release_user(&self, user: &str, conn: Origin) {
        if let Some(users) = &self.users {
            if let Ok(mut users) = users.lock() {
                users.release(user, conn);
            }
        }
    }

    fn under_load(&self) -> bool {
        self.pacing.load(Ordering::Relaxed)
            || (self.max != usize::MAX && self.open() * LOAD_DENOMINATOR >= self.max * LOAD_NUMERATOR)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{ConnId, ConnKey, WorkerId};

    #[test]
    fn the_total_and_the_per_address_caps_refuse_and_release() {
        let gate = Gate::new(2, 1, 0, PerUserPolicy::RefuseNewest);
        let (a, b) = ("127.0.0.1".parse().expect("ip"), "127.0.0.2".parse().expect("ip"));
        assert_eq!(gate.admit(a), Ok(()));
        assert_eq!(gate.admit(a), Err(Refusal::PerIp), "one per address");
        assert_eq!(gate.admit(b), Ok(()));
        assert!(gate.at_capacity() && gate.under_load());
        assert_eq!(gate.admit("127.0.0.3".parse().expect("ip")), Err(Refusal::AtCapacity));
        gate.release(Some(a));
        assert_eq!((gate.open(), gate.admit(a)), (1, Ok(())));
    }

    #[test]
    fn a_user_at_its_cap_loses_its_oldest_connection_or_the_new_one() {
        let conn = |k| Origin { worker: WorkerId(0), key: ConnKey(k), conn: ConnId(k as u64) };
        let user: Arc<str> = Arc::from("u");
        let oldest = Gate::new(0, 0, 1, PerUserPolicy::CloseOldest);
        assert!(matches!(oldest.admit_user(&user, conn(1)), UserAdmit::Admit));
        assert!(matches!(oldest.admit_user(&user, conn(2)), UserAdmit::AdmitAndClose(c) if c == conn(1)));
        let newest = Gate::new(0, 0, 1, PerUserPolicy::RefuseNewest);
        assert!(matches!(newest.admit_user(&user, conn(1)), UserAdmit::Admit));
        assert!(matches!(newest.admit_user(&user, conn(2)), UserAdmit::Refuse(_)));
        newest.release_user("u", conn(1));
        assert!(matches!(newest.admit_user(&user, conn(2)), UserAdmit::Admit));
    }
}
