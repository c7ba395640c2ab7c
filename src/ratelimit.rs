//! Per-connection rate limits: token buckets refilled from `now_ms`, one per limited action,
//! and a violation budget that turns a client which keeps hitting them into a 4008 close.
//!
//! Why it exists: PROTOCOL.md gives `rate_limited` for a client over its limits and 4008 for
//! one that keeps trying; the session asks [`ConnLimits::check`] before each action. The state
//! lives in every connection, so it is 24 bytes: one `u32` timestamp (ms, wrapping; a bucket
//! untouched for 49 days refills as if less time had passed, which at worst refuses one
//! action) and five `f32` levels refilled together. Written here rather than taken from
//! `governor`: its GCRA state is as small, but it reads its own clock and keys limiters in a
//! shared map, and the core must be handed `now`. The same [`Bucket`] paces accepts per worker
//! ([`crate::admission`]). It must never read a clock, allocate, or touch IO.

/// A refill rate and the most tokens a bucket holds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Tokens added per second.
    pub per_s: f32,
    /// Capacity: what a full bucket allows at once.
    pub burst: f32,
}

impl Rate {
    /// `per_s` tokens a second, at most `burst` at once.
    pub const fn new(per_s: f32, burst: f32) -> Self {
        Self { per_s, burst }
    }

    /// Whether this rate limits anything (a zero rate or burst means "unlimited").
    pub fn is_unlimited(&self) -> bool {
        self.per_s <= 0.0 || self.burst <= 0.0
    }
}

/// One token bucket, 8 bytes. Starts full.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    tokens: f32,
    last_ms: u32,
}

impl Bucket {
    /// A full bucket at `now_ms`.
    pub fn full(rate: Rate, now_ms: u64) -> Self {
        Self { tokens: rate.burst, last_ms: now_ms as u32 }
    }

    fn refill(&mut self, rate: Rate, now_ms: u64) {
        let now = now_ms as u32;
        let elapsed = now.wrapping_sub(self.last_ms);
        self.last_ms = now;
        self.tokens = (self.tokens + elapsed as f32 * rate.per_s / 1000.0).min(rate.burst);
    }

    /// Take one token if there is one at `now_ms`.
    pub fn try_take(&mut self, rate: Rate, now_ms: u64) -> bool {
        if rate.is_unlimited() {
            return true;
        }
        self.refill(rate, now_ms);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Milliseconds from `now_ms` until a token is available (0 when one is).
    pub fn wait_ms(&self, rate: Rate, now_ms: u64) -> u64 {
        if rate.is_unlimited() {
            return 0;
        }
        let mut copy = *self;
        copy.refill(rate, now_ms);
        if copy.tokens >= 1.0 {
            0
        } else {
            ((1.0 - copy.tokens) * 1000.0 / rate.per_s).ceil() as u64
        }
    }
}

/// An action a connection's limits apply to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Any other client message (`ping`, `leave`, `refresh`, a binary message, a WebSocket
    /// ping frame): only the all-messages limit applies.
    Message,
    /// `join`.
    Join,
    /// `comment`.
    Comment,
    /// `react`.
    React,
}

impl Action {
    fn bucket(self) -> Option<usize> {
        match self {
            Self::Message => None,
            Self::Join => Some(JOIN),
            Self::Comment => Some(COMMENT),
            Self::React => Some(REACT),
        }
    }

    /// The op's name, for messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Message => "messages",
            Self::Join => "joins",
            Self::Comment => "comments",
            Self::React => "reactions",
        }
    }
}

/// The configured limits (`[limits]`), shared by every connection of a worker.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimits {
    /// Every client message.
    pub message: Rate,
    /// `join`.
    pub join: Rate,
    /// `comment`.
    pub comment: Rate,
    /// `react`.
    pub react: Rate,
    /// Refusals tolerated: `burst` at once, refilled at `per_s`. Running out closes with 4008
    /// (the default, 10 at once refilled at 1/s, closes a client refused more than 10 times
    /// within 10 s).
    pub violations: Rate,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            message: Rate::new(50.0, 100.0),
            join: Rate::new(5.0, 64.0),
            comment: Rate::new(5.0, 10.0),
            react: Rate::new(20.0, 40.0),
            violations: Rate::new(1.0, 10.0),
        }
    }
}

impl RateLimits {
    fn rate(&self, bucket: usize) -> Rate {
        match bucket {
            MESSAGE => self.message,
            JOIN => self.join,
            COMMENT => self.comment,
            REACT => self.react,
            _ => self.violations,
        }
    }
}

const MESSAGE: usize = 0;
const JOIN: usize = 1;
const COMMENT: usize = 2;
const REACT: usize = 3;
const VIOLATIONS: usize = 4;
const BUCKETS: usize = 5;

/// What [`ConnLimits::check`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Go ahead.
    Allowed,
    /// Refuse this action: reply `error` `rate_limited` (with the op's `ref`; nothing is
    /// fanned out). The connection stays open.
    Limited(Action),
    /// Refused too often: close the connection with 4008 ([`Verdict::CLOSE_CODE`]).
    Close,
}

impl Verdict {
    /// The close code of [`Verdict::Close`].
    pub const CLOSE_CODE: u16 = crate::wire::frame::close_code::RATE_LIMITED;

    /// The `error` code of [`Verdict::Limited`].
    pub const ERROR_CODE: crate::wire::ErrorCode = crate::wire::ErrorCode::RateLimited;
}

/// One connection's buckets (24 bytes). See the module doc.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnLimits {
    last_ms: u32,
    tokens: [f32; BUCKETS],
}

impl ConnLimits {
    /// Full buckets at `now_ms` (a new connection may use its whole burst).
    pub fn new(limits: &RateLimits, now_ms: u64) -> Self {
        let mut tokens = [0.0; BUCKETS];
        for (i, t) in tokens.iter_mut().enumerate() {
            *t = limits.rate(i).burst;
        }
        Self { last_ms: now_ms as u32, tokens }
    }

    fn refill(&mut self, limits: &RateLimits, now_ms: u64) {
        let now = now_ms as u32;
        let elapsed = now.wrapping_sub(self.last_ms) as f32;
        self.last_ms = now;
        for (i, t) in self.tokens.iter_mut().enumerate() {
            let rate = limits.rate(i);
            *t = (*t + elapsed * rate.per_s / 1000.0).min(rate.burst);
        }
    }

    fn take(&mut self, limits: &RateLimits, bucket: usize) -> bool {
        if limits.rate(bucket).is_unlimited() {
            return true;
        }
        if self.tokens[bucket] >= 1.0 {
            self.tokens[bucket] -= 1.0;
            true
        } else {
            false
        }
    }

    /// Account for one `action` at `now_ms`: it takes a token from the all-messages bucket
    /// and from its own; when either is empty it is refused and counts as a violation, and
    /// once the violation budget is spent the verdict is [`Verdict::Close`]: the caller closes
    /// at once (the budget would refill later).
    pub fn check(&mut self, limits: &RateLimits, action: Action, now_ms: u64) -> Verdict {
        self.refill(limits, now_ms);
        let allowed = self.take(limits, MESSAGE) && action.bucket().is_none_or(|b| self.take(limits, b));
        if allowed {
            return Verdict::Allowed;
        }
        if self.take(limits, VIOLATIONS) {
            Verdict::Limited(action)
        } else {
            Verdict::Close
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let rate = Rate::new(5.0, 10.0);
        let mut b = Bucket::full(rate, 1_000);
        assert_eq!((0..20).filter(|_| b.try_take(rate, 1_000)).count(), 10);
        assert_eq!(b.wait_ms(rate, 1_000), 200);
        assert!(!b.try_take(rate, 1_199));
        assert!(b.try_take(rate, 1_200), "one token per 200 ms at 5/s");
        assert!(!b.try_take(rate, 1_200));
        // A long pause refills to the burst, not beyond.
        assert_eq!((0..20).filter(|_| b.try_take(rate, 100_000)).count(), 10);
        assert!(Bucket::full(Rate::new(0.0, 0.0), 0).try_take(Rate::new(0.0, 0.0), 0), "0 = unlimited");
    }

    #[test]
    fn timestamps_wrap_without_harm() {
        let rate = Rate::new(1.0, 1.0);
        let start = u64::from(u32::MAX) - 10;
        let mut b = Bucket::full(rate, start);
        assert!(b.try_take(rate, start));
        assert!(!b.try_take(rate, start + 500));
        assert!(b.try_take(rate, start + 1_000), "refilled across the u32 wrap");
    }

    #[test]
    fn comments_are_limited_then_the_connection_is_closed() {
        let limits = RateLimits::default();
        let mut c = ConnLimits::new(&limits, 0);
        let verdicts: Vec<Verdict> = (0..25).map(|_| c.check(&limits, Action::Comment, 0)).collect();
        assert!(verdicts[..10].iter().all(|v| *v == Verdict::Allowed), "burst of 10");
        assert!(verdicts[10..20].iter().all(|v| *v == Verdict::Limited(Action::Comment)), "10 violations");
        assert!(verdicts[20..].iter().all(|v| *v == Verdict::Close));
    }

    #[test]
    fn violations_spread_out_in_time_do_not_close() {
        let limits = RateLimits::default();
        let mut c = ConnLimits::new(&limits, 0);
        for _ in 0..10 {
            assert_eq!(c.check(&limits, Action::Comment, 0), Verdict::Allowed);
        }
        // One refused comment every 1.5 s: the violation budget refills faster.
        let mut now = 0;
        for _ in 0..50 {
            now += 1_500;
            for _ in 0..8 {
                assert_ne!(c.check(&limits, Action::Comment, now), Verdict::Close);
            }
        }
    }

    #[test]
    fn every_message_counts_toward_the_overall_limit() {
        let limits = RateLimits::default();
        let mut c = ConnLimits::new(&limits, 0);
        assert_eq!((0..100).filter(|_| c.check(&limits, Action::Message, 0) == Verdict::Allowed).count(), 100);
        assert_eq!(c.check(&limits, Action::React, 0), Verdict::Limited(Action::React), "all-messages bucket empty");
        // 1 s later: 50 more messages.
        assert_eq!((0..60).filter(|_| c.check(&limits, Action::Message, 1_000) == Verdict::Allowed).count(), 50);
    }

    #[test]
    fn joins_have_their_own_bucket() {
        let limits = RateLimits::default();
        let mut c = ConnLimits::new(&limits, 0);
        assert_eq!((0..80).filter(|_| c.check(&limits, Action::Join, 0) == Verdict::Allowed).count(), 64);
        assert_eq!(c.check(&limits, Action::React, 0), Verdict::Allowed, "reactions unaffected");
    }

    #[test]
    fn the_state_is_small() {
        assert_eq!(size_of::<ConnLimits>(), 24);
        assert_eq!(size_of::<Bucket>(), 8);
    }
}
