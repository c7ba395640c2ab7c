//! The claims roomcast reads from a verified token (PROTOCOL.md "Viewer connection"), checked
//! once at verification and then carried by the session as one `Arc<Claims>`.
//!
//! Why a type of its own: every join, comment and reaction asks the claims, so they must be
//! cheap to ask (room patterns pre-split into exact / prefix / any) and impossible to hold in
//! an unchecked state (`sub` is validated before a `Claims` exists). It must never hold the
//! token itself, nor anything the session does not need.

use super::AuthError;
use serde::Deserialize;
use serde_json::Value;
use std::sync::Arc;

/// Most room patterns one token may carry.
pub const MAX_ROOM_PATTERNS: usize = 256;

/// `exp` of claims that never expire ([`Claims::development`]).
pub const NEVER: u64 = u64::MAX;

/// One entry of the `rooms` claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomPattern {
    /// `*`: every room.
    Any,
    /// `live-*`: rooms starting with `live-`.
    Prefix(Box<str>),
    /// Exactly this room.
    Exact(Box<str>),
}

impl RoomPattern {
    fn parse(text: &str) -> Result<Self, AuthError> {
        let bad = |why| AuthError::BadClaim { claim: "rooms", why };
        if text.is_empty() {
            return Err(bad("holds an empty pattern"));
        }
        if text.len() > crate::wire::MAX_NAME_BYTES + 1 || text.chars().any(char::is_control) {
            return Err(bad("holds a pattern that is too long or has control characters"));
        }
        match text.split_once('*') {
            None => Ok(Self::Exact(text.into())),
            Some(("", "")) => Ok(Self::Any),
            Some((prefix, "")) => Ok(Self::Prefix(prefix.into())),
            Some(_) => Err(bad("holds a `*` that does not end its pattern")),
        }
    }

    fn allows(&self, room: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Prefix(prefix) => room.starts_with(&**prefix),
            Self::Exact(exact) => room == &**exact,
        }
    }
}

/// The `rooms` claim: which rooms the user may join. Shared by `Arc`, so a refreshed session
/// or a cache hit costs a refcount, not a copy. An empty set allows nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomPatterns(Arc<[RoomPattern]>);

impl RoomPatterns {
    /// Every room (`*`).
    pub fn any() -> Self {
        Self(Arc::from([RoomPattern::Any]))
    }

    /// No room at all (a token without `rooms`).
    pub fn none() -> Self {
        Self(Arc::from([]))
    }

    /// Patterns from their text form (`*`, `live-*`, `lobby`); what the `rooms` claim holds.
    pub fn parse<'a>(patterns: impl IntoIterator<Item = &'a str>) -> Result<Self, AuthError> {
        let parsed = patterns.into_iter().map(RoomPattern::parse).collect::<Result<Vec<_>, _>>()?;
        if parsed.len() > MAX_ROOM_PATTERNS {
            return Err(AuthError::BadClaim { claim: "rooms", why: "holds more than 256 patterns" });
        }
        Ok(Self(parsed.into()))
    }

    /// Whether `room` matches one of the patterns.
    pub fn allows(&self, room: &str) -> bool {
        self.0.iter().any(|p| p.allows(room))
    }

    /// The patterns.
    pub fn patterns(&self) -> &[RoomPattern] {
        &self.0
    }
}

/// Why an action is refused by the claims; every variant is an `error` reply with code
/// `forbidden` naming the room ([`Denied::error_code`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// The room matches none of the `rooms` patterns.
    #[error("your token does not allow this room")]
    Room,
    /// Commenting or reacting needs the `comment` claim.
    #[error("your token does not allow comments or reactions")]
    NoComment,
}

impl Denied {
    /// The `error` code of the refusal.
    pub fn error_code(self) -> crate::wire::ErrorCode {
        crate::wire::ErrorCode::Forbidden
    }
}

/// What a verified token says about its viewer. See the module doc.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The user id (`sub`): 1..=128 bytes, no control characters.
    pub sub: Arc<str>,
    /// Display name shown in presence (`name`), when the token has one.
    pub name: Option<Arc<str>>,
    /// Expiry (`exp`), seconds since the Unix epoch; [`NEVER`] for development claims.
    pub exp: u64,
    /// Rooms the user may join (`rooms`).
    pub rooms: RoomPatterns,
    /// May comment and react in rooms it may join (`comment`).
    pub comment: bool,
    /// Operator rights (`admin`).
    pub admin: bool,
}

impl Claims {
    /// The claims of a viewer when no auth key is configured: `user` from `?user=` (or made
    /// up), every room, comments allowed, never expires.
    pub fn development(user: Arc<str>) -> Self {
        Self { sub: user, name: None, exp: NEVER, rooms: RoomPatterns::any(), comment: true, admin: false }
    }

    /// Whether `join` of `room` is allowed.
    pub fn may_join(&self, room: &str) -> Result<(), Denied> {
        if self.rooms.allows(room) {
            Ok(())
        } else {
            Err(Denied::Room)
        }
    }

    /// Whether `comment` (and `react`) in `room` is allowed.
    pub fn may_comment(&self, room: &str) -> Result<(), Denied> {
        self.may_join(room)?;
        if self.comment {
            Ok(())
        } else {
            Err(Denied::NoComment)
        }
    }

    /// The name presence shows: `name`, else the user id.
    pub fn display_name(&self) -> &Arc<str> {
        self.name.as_ref().unwrap_or(&self.sub)
    }

    /// When these claims stop being valid, in ms since the epoch, with `leeway_s`; `None`
    /// when they never expire.
    pub fn deadline_ms(&self, leeway_s: u64) -> Option<u64> {
        (self.exp != NEVER).then(|| self.exp.saturating_add(leeway_s).saturating_mul(1000))
    }

    /// Whether the claims are expired at `now_s` with `leeway_s`.
    pub fn expired(&self, now_s: u64, leeway_s: u64) -> bool {
        self.exp != NEVER && self.exp.saturating_add(leeway_s) < now_s
    }
}

/// The claims as they come out of the token's JSON: every field lenient, checked by
/// [`RawClaims::check`] so each problem gets its own message.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawClaims {
    #[serde(default)]
    sub: Value,
    #[serde(default)]
    exp: Value,
    #[serde(default)]
    nbf: Value,
    #[serde(default)]
    name: Value,
    #[serde(default)]
    rooms: Value,
    #[serde(default)]
    comment: Value,
    #[serde(default)]
    admin: Value,
}

fn timestamp(v: &Value, claim: &'static str) -> Result<Option<u64>, AuthError> {
    match v {
        Value::Null => Ok(None),
        Value::Number(n) => {
            if let Some(n) = n.as_u64() {
                return Ok(Some(n));
            }
            // RFC 7519 NumericDate may have a fraction.
            match n.as_f64() {
                Some(f) if f.is_finite() && f >= 0.0 && f < u64::MAX as f64 => Ok(Some(f as u64)),
                _ => Err(AuthError::BadClaim { claim, why: "must be a non-negative NumericDate" }),
            }
        }
        _ => Err(AuthError::BadClaim { claim, why: "must be a NumericDate (seconds since the epoch)" }),
    }
}

fn flag(v: &Value, claim: &'static str) -> Result<bool, AuthError> {
    match v {
        Value::Null => Ok(false),
        Value::Bool(b) => Ok(*b),
        _ => Err(AuthError::BadClaim { claim, why: "must be a boolean" }),
    }
}

impl RawClaims {
    /// Check everything against `now_s` and `leeway_s` and build the typed claims.
    pub(crate) fn check(self, now_s: u64, leeway_s: u64) -> Result<Claims, AuthError> {
        let exp = timestamp(&self.exp, "exp")?.ok_or(AuthError::BadClaim { claim: "exp", why: "is missing" })?;
        if exp.saturating_add(leeway_s) < now_s {
            return Err(AuthError::Expired { exp, now: now_s, leeway_s });
        }
        if let Some(nbf) = timestamp(&self.nbf, "nbf")? {
            if nbf > now_s.saturating_add(leeway_s) {
                return Err(AuthError::NotYetValid { nbf, now: now_s });
            }
        }
        let sub = match &self.sub {
            Value::String(s) => s,
            Value::Null => return Err(AuthError::BadClaim { claim: "sub", why: "is missing" }),
            _ => return Err(AuthError::BadClaim { claim: "sub", why: "must be a string" }),
        };
        let bad_sub = if sub.is_empty() {
            Some("is empty")
        } else if sub.len() > crate::wire::MAX_NAME_BYTES {
            Some("is longer than 128 bytes")
        } else if sub.chars().any(char::is_control) {
            Some("has control characters")
        } else {
            None
        };
        if let Some(why) = bad_sub {
            return Err(AuthError::BadClaim { claim: "sub", why });
        }
        let name = match &self.name {
            Value::Null => None,
            Value::String(s) if s.len() <= crate::wire::MAX_NAME_BYTES && !s.chars().any(char::is_control) => {
                (!s.is_empty()).then(|| Arc::from(s.as_str()))
            }
            Value::String(_) => {
                return Err(AuthError::BadClaim {
                    claim: "name",
                    why: "is longer than 128 bytes or has control characters",
                })
            }
            _ => return Err(AuthError::BadClaim { claim: "name", why: "must be a string" }),
        };
        let rooms = match &self.rooms {
            Value::Null => RoomPatterns::none(),
            Value::String(one) => RoomPatterns::parse([one.as_str()])?,
            Value::Array(list) => {
                let texts = list
                    .iter()
                    .map(|v| v.as_str().ok_or(AuthError::BadClaim { claim: "rooms", why: "must hold strings only" }))
                    .collect::<Result<Vec<_>, _>>()?;
                RoomPatterns::parse(texts)?
            }
            _ => return Err(AuthError::BadClaim { claim: "rooms", why: "must be a list of room patterns" }),
        };
        Ok(Claims {
            sub: Arc::from(sub.as_str()),
            name,
            exp,
            rooms,
            comment: flag(&self.comment, "comment")?,
            admin: flag(&self.admin, "admin")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(v: Value) -> Result<Claims, AuthError> {
        serde_json::from_value::<RawClaims>(v).expect("any object").check(1_000, 5)
    }

    #[test]
    fn patterns_match_exact_prefix_and_any() {
        let p = RoomPatterns::parse(["lobby", "live-*"]).expect("valid");
        assert!(p.allows("lobby") && p.allows("live-1") && p.allows("live-"));
        assert!(!p.allows("lobby2") && !p.allows("liv") && !p.allows("other"));
        assert!(RoomPatterns::parse(["*"]).expect("valid").allows("anything"));
        assert!(!RoomPatterns::none().allows("lobby"));
        assert!(RoomPatterns::parse(["a*b"]).is_err());
        assert!(RoomPatterns::parse([""]).is_err());
        assert!(RoomPatterns::parse(std::iter::repeat_n("x", 257)).is_err());
    }

    #[test]
    fn a_full_claim_set_is_typed() {
        let c = check(json!({"sub": "alice", "exp": 2000, "name": "Alice", "rooms": ["live-*"], "comment": true}))
            .expect("valid");
        assert_eq!(
            (&*c.sub, c.name.as_deref(), c.exp, c.comment, c.admin),
            ("alice", Some("Alice"), 2000, true, false)
        );
        assert_eq!(c.may_join("live-3"), Ok(()));
        assert_eq!(c.may_join("vip"), Err(Denied::Room));
        assert_eq!(c.may_comment("live-3"), Ok(()));
        assert_eq!(&**c.display_name(), "Alice");
        assert_eq!(c.deadline_ms(5), Some(2_005_000));
    }

    #[test]
    fn missing_optional_claims_deny_by_default() {
        let c = check(json!({"sub": "bob", "exp": 2000})).expect("valid");
        assert_eq!(c.may_join("lobby"), Err(Denied::Room));
        let c = check(json!({"sub": "bob", "exp": 2000, "rooms": "*"})).expect("valid");
        assert_eq!(c.may_comment("lobby"), Err(Denied::NoComment));
        assert_eq!(&**c.display_name(), "bob");
    }

    #[test]
    fn each_bad_claim_says_which() {
        let claim = |v: Value| match check(v) {
            Err(AuthError::BadClaim { claim, .. }) => claim,
            other => panic!("expected a bad claim, got {other:?}"),
        };
        assert_eq!(claim(json!({"exp": 2000})), "sub");
        assert_eq!(claim(json!({"sub": "", "exp": 2000})), "sub");
        assert_eq!(claim(json!({"sub": "a\u{7}b", "exp": 2000})), "sub");
        assert_eq!(claim(json!({"sub": "x".repeat(129), "exp": 2000})), "sub");
        assert_eq!(claim(json!({"sub": 5, "exp": 2000})), "sub");
        assert_eq!(claim(json!({"sub": "a"})), "exp");
        assert_eq!(claim(json!({"sub": "a", "exp": "soon"})), "exp");
        assert_eq!(claim(json!({"sub": "a", "exp": 2000, "comment": "yes"})), "comment");
        assert_eq!(claim(json!({"sub": "a", "exp": 2000, "rooms": [1]})), "rooms");
        assert_eq!(claim(json!({"sub": "a", "exp": 2000, "name": 3})), "name");
    }

    #[test]
    fn time_claims_use_now_and_the_leeway() {
        assert!(check(json!({"sub": "a", "exp": 995})).is_ok(), "within the leeway");
        assert_eq!(
            check(json!({"sub": "a", "exp": 994})),
            Err(AuthError::Expired { exp: 994, now: 1000, leeway_s: 5 })
        );
        assert!(check(json!({"sub": "a", "exp": 2000, "nbf": 1005})).is_ok());
        assert!(matches!(check(json!({"sub": "a", "exp": 2000, "nbf": 1006})), Err(AuthError::NotYetValid { .. })));
        assert_eq!(check(json!({"sub": "a", "exp": 1500.7})).map(|c| c.exp), Ok(1500));
    }

    #[test]
    fn development_claims_allow_everything_and_never_expire() {
        let c = Claims::development("dev".into());
        assert_eq!(c.may_comment("any-room"), Ok(()));
        assert_eq!(c.deadline_ms(5), None);
        assert!(!c.expired(u64::MAX - 1, 5));
    }
}
