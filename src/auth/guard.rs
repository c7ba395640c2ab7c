//! One connection's trust state: its claims and its rate-limit buckets, asked once per client
//! action.
//!
//! Why it exists: every `join`, `comment`, `react` and other message is decided by two things
//! (the token's claims and the connection's rate limits) whose refusals map to three wire
//! consequences (`error forbidden`, `error rate_limited`, close 4008). A [`Guard`] lives in the
//! session (48 bytes: the [`Identity`] and the buckets) and answers each action with
//! `Ok(())` or a [`Refused`] that knows its consequence, so the session never maps errors
//! itself. Rate limits are checked first: a flooding client pays for its refused joins too.
//! It must never read a clock or do IO; `now_ms` is the worker's.

use super::{AuthError, Authenticator, Claims, Denied};
use crate::ratelimit::{Action, ConnLimits, RateLimits, Verdict};
use crate::wire::ErrorCode;
use std::sync::Arc;

/// Why an action was refused; each variant knows what goes on the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Over a rate limit: an `error` with code `rate_limited` (and the op's `ref`).
    #[error("too many {}: slow down", .0.as_str())]
    RateLimited(Action),
    /// Refused too often: close the connection with 4008.
    #[error("rate limit exceeded repeatedly")]
    Close,
    /// The claims do not allow it: an `error` with code `forbidden` naming the room.
    #[error("{0}")]
    Forbidden(Denied),
    /// A `refresh` brought a token that does not verify: an `error` with code `unauthorized`;
    /// the session keeps its current claims (and its deadline).
    #[error("{0}")]
    Unauthorized(AuthError),
}

impl Refused {
    /// The `error` code to reply with; `None` for [`Refused::Close`], which is a close.
    pub fn error_code(&self) -> Option<ErrorCode> {
        match self {
            Self::RateLimited(_) => Some(ErrorCode::RateLimited),
            Self::Close => None,
            Self::Forbidden(d) => Some(d.error_code()),
            Self::Unauthorized(e) => Some(e.error_code()),
        }
    }

    /// The close code, for [`Refused::Close`] (4008).
    pub fn close_code(&self) -> Option<u16> {
        matches!(self, Self::Close).then_some(Verdict::CLOSE_CODE)
    }
}

fn rate(verdict: Verdict) -> Result<(), Refused> {
    match verdict {
        Verdict::Allowed => Ok(()),
        Verdict::Limited(action) => Err(Refused::RateLimited(action)),
        Verdict::Close => Err(Refused::Close),
    }
}

/// Who the viewer is. A development identity (no auth key configured) is just a user id:
/// every room, comments allowed, never expires, and it costs no claims allocation per
/// connection.
#[derive(Debug, Clone)]
pub enum Identity {
    /// No auth key is configured: the user id from `?user=` (or made up).
    Development(Arc<str>),
    /// A verified token's claims.
    Verified(Arc<Claims>),
}

impl Identity {
    /// The user id (`sub`).
    pub fn user(&self) -> &Arc<str> {
        match self {
            Self::Development(user) => user,
            Self::Verified(claims) => &claims.sub,
        }
    }

    /// The display name shown in presence (the user id when none was given).
    pub fn name(&self) -> &Arc<str> {
        match self {
            Self::Development(user) => user,
            Self::Verified(claims) => claims.display_name(),
        }
    }

    fn may_join(&self, room: &str) -> Result<(), Denied> {
        match self {
            Self::Development(_) => Ok(()),
            Self::Verified(claims) => claims.may_join(room),
        }
    }

    fn may_comment(&self, room: &str) -> Result<(), Denied> {
        match self {
            Self::Development(_) => Ok(()),
            Self::Verified(claims) => claims.may_comment(room),
        }
    }
}

/// See the module doc. Call order: [`Guard::new`] after the upgrade (with the identity the
/// [`Authenticator`] gave), then one `check_*` per client message, and [`Guard::refresh`] for
/// a `refresh` op. [`Guard::deadline_ms`] is the 4001 deadline to arm in the timer wheel;
/// re-arm it after every successful refresh.
#[derive(Debug, Clone)]
pub struct Guard {
    identity: Identity,
    limits: ConnLimits,
}

impl Guard {
    /// A guard for a new connection at `now_ms` (full buckets).
    pub fn new(identity: Identity, limits: &RateLimits, now_ms: u64) -> Self {
        Self { identity, limits: ConnLimits::new(limits, now_ms) }
    }

    /// Who the viewer is now.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// A `join` of `room`.
    pub fn check_join(&mut self, limits: &RateLimits, room: &str, now_ms: u64) -> Result<(), Refused> {
        rate(self.limits.check(limits, Action::Join, now_ms))?;
        self.identity.may_join(room).map_err(Refused::Forbidden)
    }

    /// A `comment` in `room`.
    pub fn check_comment(&mut self, limits: &RateLimits, room: &str, now_ms: u64) -> Result<(), Refused> {
        rate(self.limits.check(limits, Action::Comment, now_ms))?;
        self.identity.may_comment(room).map_err(Refused::Forbidden)
    }

    /// A `react` in `room` (needs the `comment` claim, as PROTOCOL.md's authorisation says).
    pub fn check_react(&mut self, limits: &RateLimits, room: &str, now_ms: u64) -> Result<(), Refused> {
        rate(self.limits.check(limits, Action::React, now_ms))?;
        self.identity.may_comment(room).map_err(Refused::Forbidden)
    }

    /// Any other client message: `leave`, `ping`, `refresh`, a binary message, a WebSocket
    /// ping frame. Only the all-messages limit applies.
    pub fn check_message(&mut self, limits: &RateLimits, now_ms: u64) -> Result<(), Refused> {
        rate(self.limits.check(limits, Action::Message, now_ms))
    }

    /// A `refresh` with `token` (after [`Guard::check_message`]): the new claims replace the
    /// old ones when the token verifies and names the same `sub`. Returns the new 4001
    /// deadline (`None`: never). The caller then leaves, with `left` reason `forbidden`, every
    /// joined room for which [`Guard::still_allowed`] is false.
    /// Without an auth key (a development identity) there is nothing to extend: `Ok(None)`.
    pub fn refresh(&mut self, auth: &mut Authenticator, token: &str, now_ms: u64) -> Result<Option<u64>, Refused> {
        let Identity::Verified(claims) = &self.identity else { return Ok(None) };
        let fresh = auth.refresh(claims, token, now_ms).map_err(Refused::Unauthorized)?;
        self.identity = Identity::Verified(fresh);
        Ok(self.deadline_ms(auth))
    }

    /// Whether the current claims still allow membership of `room` (after a refresh).
    pub fn still_allowed(&self, room: &str) -> bool {
        self.identity.may_join(room).is_ok()
    }

    /// When the connection must be closed with 4001 unless refreshed (ms since the epoch);
    /// `None` when it never must.
    pub fn deadline_ms(&self, auth: &Authenticator) -> Option<u64> {
        match &self.identity {
            Identity::Development(_) => None,
            Identity::Verified(claims) => auth.deadline_ms(claims),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::mint::{mint, SigningKey, TokenSpec};
    use crate::auth::{Authenticated, KeySet, Rules, Verifier};

    const SECRET: &[u8] = b"a-development-secret-of-32-bytes!";
    const NOW_S: u64 = 1_800_000_000;

    fn authenticator() -> Authenticator {
        let mut keys = KeySet::default();
        keys.add_hmac_secret(SECRET).expect("secret");
        Authenticator::new(Some(Arc::new(Verifier::new(keys, Rules::default()))), 64)
    }

    fn token(sub: &str, rooms: &[&str], comment: bool, now_s: u64) -> String {
        let spec = TokenSpec {
            sub: sub.into(),
            rooms: rooms.iter().map(|r| r.to_string()).collect(),
            comment,
            ttl_s: 60,
            ..TokenSpec::default()
        };
        mint(&spec, &SigningKey::hmac(SECRET), now_s).expect("mint")
    }

    fn guard(auth: &mut Authenticator, rooms: &[&str], comment: bool) -> Guard {
        let t = token("alice", rooms, comment, NOW_S);
        let Ok(Authenticated::Verified(claims)) = auth.authenticate(Some(&t), NOW_S * 1000) else { panic!("verified") };
        Guard::new(Identity::Verified(claims), &RateLimits::default(), NOW_S * 1000)
    }

    #[test]
    fn joins_follow_the_room_patterns() {
        let limits = RateLimits::default();
        let mut g = guard(&mut authenticator(), &["live-*"], false);
        assert_eq!(g.check_join(&limits, "live-1", 0), Ok(()));
        let refused = g.check_join(&limits, "vip", 0).expect_err("forbidden");
        assert_eq!((refused.error_code(), refused.close_code()), (Some(ErrorCode::Forbidden), None));
        assert_eq!(g.check_comment(&limits, "live-1", 0), Err(Refused::Forbidden(Denied::NoComment)));
        assert_eq!(g.check_react(&limits, "live-1", 0), Err(Refused::Forbidden(Denied::NoComment)));
    }

    #[test]
    fn floods_are_rate_limited_then_closed() {
        let limits = RateLimits::default();
        let mut g = guard(&mut authenticator(), &["*"], true);
        let now = NOW_S * 1000;
        let results: Vec<_> = (0..25).map(|_| g.check_comment(&limits, "live-1", now)).collect();
        assert!(results[..10].iter().all(Result::is_ok));
        assert_eq!(results[10], Err(Refused::RateLimited(Action::Comment)));
        assert_eq!(results[10].as_ref().expect_err("limited").error_code(), Some(ErrorCode::RateLimited));
        assert_eq!(results[20], Err(Refused::Close));
        assert_eq!(results[20].as_ref().expect_err("close").close_code(), Some(4008));
    }

    #[test]
    fn refresh_extends_the_deadline_and_narrows_the_rooms() {
        let mut auth = authenticator();
        let mut g = guard(&mut auth, &["live-*", "lobby"], true);
        assert_eq!(g.deadline_ms(&auth), Some((NOW_S + 65) * 1000));
        let later = NOW_S + 50;
        let narrower = token("alice", &["lobby"], true, later);
        assert_eq!(g.refresh(&mut auth, &narrower, later * 1000), Ok(Some((later + 65) * 1000)));
        assert!(g.still_allowed("lobby") && !g.still_allowed("live-1"));
        let other = token("bob", &["*"], true, later);
        assert_eq!(g.refresh(&mut auth, &other, later * 1000), Err(Refused::Unauthorized(AuthError::SubjectChanged)));
        assert_eq!(
            g.refresh(&mut auth, "garbage", later * 1000).map_err(|e| e.error_code()),
            Err(Some(ErrorCode::Unauthorized))
        );
        assert!(g.still_allowed("lobby"), "a failed refresh keeps the claims");
        let expired = token("alice", &["*"], true, NOW_S - 1_000);
        assert!(matches!(
            g.refresh(&mut auth, &expired, later * 1000),
            Err(Refused::Unauthorized(AuthError::Expired { .. }))
        ));
    }

    #[test]
    fn development_guards_allow_everything_and_never_expire() {
        let auth = Authenticator::new(None, 0);
        let limits = RateLimits::default();
        let mut g = Guard::new(Identity::Development("dev".into()), &limits, 0);
        assert_eq!(g.check_comment(&limits, "any", 0), Ok(()));
        assert_eq!(g.deadline_ms(&auth), None);
        assert!(size_of::<Guard>() <= 48, "lives in every connection");
    }
}
