//! The Lua scripts the broker runs in Redis, and the keys they touch.
//!
//! One script per job, each atomic in Redis (a script runs alone), so every invariant holds
//! between any two commands of any node:
//!
//! - [`sequence`]: the next seq of a room, the message filled in with it, appended to the
//!   room's history stream (bounded, entry id `<seq>-1`) and published on the room's channel,
//!   all at once: the channel carries messages in seq order, and the stream holds exactly
//!   what was published. A room without a record gets a new epoch (and an empty stream).
//! - [`snapshot`]: a room's epoch, seq, state and history stream, for a node that starts
//!   following it (creating the epoch if the room is new).
//! - [`PRESENCE`]: one node's presence changes in a room: per node a hash of its users there,
//!   per room a hash counting on how many nodes each user is online; who came or went over the
//!   whole cluster (and this node's reaction counts) is published on the room's channel.
//! - [`REAP`]: a dead node's users leave every room it had users in (idempotent: the first
//!   node that sees the heartbeat gone does it).
//! - [`CLOSE`]: a closed room's record and history are dropped and every node is told on the
//!   control channel ([`CONTROL`], which also carries kicks).
//!
//! Keys carry the room in a hash tag (`rc:{<room>}:...`): one room's keys stay in one slot.

/// The start of [`sequence`] and [`snapshot`]: the room's epoch (KEYS[1] its record, KEYS[2]
/// its stream), made from Redis's clock when the room has no record: a room without one starts
/// over (an empty stream), so an epoch is never reused with other history.
const EPOCH: &str = r#"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  local t = redis.call('TIME')
  epoch = string.format('%x%05x', tonumber(t[1]), tonumber(t[2]))
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'seq', 0, 'version', 0)
end
"#;

/// See the module doc. KEYS: meta hash, stream. ARGV: channel, kind (`e` or `s`), history
/// size, ttl ms, ts ms, state (or empty), holes, pieces... Returns `{seq, version, epoch}`.
pub fn sequence() -> String {
    format!("{EPOCH}{SEQUENCE_BODY}")
}

const SEQUENCE_BODY: &str = r#"
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
local version
if ARGV[2] == 's' then
  version = redis.call('HINCRBY', KEYS[1], 'version', 1)
  redis.call('HSET', KEYS[1], 'state', ARGV[6])
else
  version = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
end
local holes = ARGV[7]
local parts = {}
for i = 1, #holes do
  parts[#parts + 1] = ARGV[7 + i]
  local h = string.sub(holes, i, i)
  if h == 'S' then
    parts[#parts + 1] = tostring(seq)
  elseif h == 'V' then
    parts[#parts + 1] = tostring(version)
  else
    parts[#parts + 1] = epoch .. '-' .. tostring(seq)
  end
end
parts[#parts + 1] = ARGV[8 + #holes]
local json = table.concat(parts)
local size = tonumber(ARGV[3])
if size > 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', size, tostring(seq) .. '-1', 't', ARGV[5], 'p', json)
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
local state = ''
if ARGV[2] == 's' then state = ARGV[6] end
local head = ARGV[2] .. ' ' .. tostring(seq) .. ' ' .. epoch .. ' ' .. tostring(version) .. ' ' .. ARGV[5] .. ' ' .. #state .. '\n'
redis.call('PUBLISH', ARGV[1], head .. state .. json)
return {seq, version, epoch}
"#;

/// See the module doc. KEYS: meta hash, stream. ARGV: ttl ms. Returns `{epoch, seq, version,
/// state or nil, entries}`.
pub fn snapshot() -> String {
    format!("{EPOCH}{SNAPSHOT_BODY}")
}

const SNAPSHOT_BODY: &str = r#"
redis.call('PEXPIRE', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
local m = redis.call('HMGET', KEYS[1], 'seq', 'version', 'state')
return {epoch, m[1] or '0', m[2] or '0', m[3], redis.call('XRANGE', KEYS[2], '-', '+')}
"#;

/// See the module doc. KEYS: the room's users hash, this node's users hash in the room, this
/// node's rooms set. ARGV: channel, room, large-room threshold, reaction kinds n, n pairs
/// (kind, count), then triples (`1`/`0` online, user, name). Returns 1 if it published.
pub const PRESENCE: &str = r#"
local joined, left, reactions = {}, {}, {}
local nr = tonumber(ARGV[4])
local i = 5
for _ = 1, nr do
  reactions[#reactions + 1] = ARGV[i]
  reactions[#reactions + 1] = tonumber(ARGV[i + 1])
  i = i + 2
end
while i + 2 <= #ARGV do
  local on, u, n = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if on == '1' then
    if redis.call('HSET', KEYS[2], u, n) == 1 then
      if redis.call('HINCRBY', KEYS[1], u, 1) == 1 then
        joined[#joined + 1] = u
        joined[#joined + 1] = n
      end
    end
  elseif redis.call('HDEL', KEYS[2], u) == 1 then
    if redis.call('HINCRBY', KEYS[1], u, -1) <= 0 then
      redis.call('HDEL', KEYS[1], u)
      left[#left + 1] = u
      left[#left + 1] = n
    end
  end
  i = i + 3
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('SADD', KEYS[3], ARGV[2])
else
  redis.call('SREM', KEYS[3], ARGV[2])
end
if #joined == 0 and #left == 0 and nr == 0 then return 0 end
local msg = {o = redis.call('HLEN', KEYS[1]), r = reactions}
if (#joined + #left) / 2 > tonumber(ARGV[3]) then
  msg.x = 1
else
  msg.j = joined
  msg.l = left
end
redis.call('PUBLISH', ARGV[1], 'p' .. cjson.encode(msg))
return 1
"#;

/// See the module doc. ARGV: the dead node's id, large-room threshold. Returns the number of
/// rooms it had users in (0 if another node reaped it first).
pub const REAP: &str = r#"
if redis.call('SREM', 'rc:nodes', ARGV[1]) == 0 then return 0 end
local rooms_key = 'rc:node:' .. ARGV[1] .. ':rooms'
local rooms = redis.call('SMEMBERS', rooms_key)
for _, room in ipairs(rooms) do
  local prefix = 'rc:{' .. room .. '}:'
  local mine = prefix .. 'n:' .. ARGV[1]
  local users = redis.call('HGETALL', mine)
  local left = {}
  for i = 1, #users, 2 do
    if redis.call('HINCRBY', prefix .. 'u', users[i], -1) <= 0 then
      redis.call('HDEL', prefix .. 'u', users[i])
      left[#left + 1] = users[i]
      left[#left + 1] = users[i + 1]
    end
  end
  redis.call('DEL', mine)
  if #left > 0 then
    local msg = {o = redis.call('HLEN', prefix .. 'u'), r = {}}
    if #left / 2 > tonumber(ARGV[2]) then msg.x = 1 else msg.l = left end
    redis.call('PUBLISH', prefix .. 'c', 'p' .. cjson.encode(msg))
  end
end
redis.call('DEL', rooms_key)
return #rooms
"#;

/// See the module doc: a closed room's record and history go, and every node hears of it.
/// KEYS: meta hash, stream. ARGV: the control channel, the message.
pub const CLOSE: &str = r#"
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('PUBLISH', ARGV[1], ARGV[2])
return 1
"#;

/// The channel of moderation commands every node follows (kicks, closed rooms).
pub const CONTROL: &str = "rc:control";

/// The set of node ids that registered (and were not reaped yet).
pub const NODES: &str = "rc:nodes";

/// A node's heartbeat key (expires after the node ttl).
pub fn heartbeat(node: &str) -> String {
    format!("rc:node:{node}")
}

/// The rooms a node has users in.
pub fn node_rooms(node: &str) -> String {
    format!("rc:node:{node}:rooms")
}

/// A room's record: epoch, seq, version, state.
pub fn meta(room: &str) -> String {
    format!("rc:{{{room}}}:m")
}

/// A room's history stream.
pub fn stream(room: &str) -> String {
    format!("rc:{{{room}}}:h")
}

/// A room's channel.
pub fn channel(room: &str) -> String {
    format!("rc:{{{room}}}:c")
}

/// The room of a channel name.
pub fn room_of_channel(channel: &str) -> Option<&str> {
    channel.strip_prefix("rc:{")?.strip_suffix("}:c")
}

/// A room's users over all nodes (user -> nodes it is online on).
pub fn room_users(room: &str) -> String {
    format!("rc:{{{room}}}:u")
}

/// One node's users in a room (user -> name).
pub fn node_users(room: &str, node: &str) -> String {
    format!("rc:{{{room}}}:n:{node}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_channel_names_its_room_whatever_the_room_holds() {
        for room in ["live", "a}:c", "{x}", "user:ann"] {
            assert_eq!(room_of_channel(&channel(room)), Some(room));
        }
        assert_eq!(room_of_channel("other"), None);
    }
}
