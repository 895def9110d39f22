-- Publish: idempotency check, XADD, trim, idempotency key.
-- KEYS: stream, trim marker, idempotency key, the group's notify stream.
-- ARGV: data, ts, maxlen,
-- minid, idempotency ttl ('' = no key). Returns {"<id> <ts>", duplicate}.
if ARGV[5] ~= '' then
  local prev = redis.call('GET', KEYS[3])
  if prev then return {prev, 1} end
end
local id = redis.call('XADD', KEYS[1], '*', 'd', ARGV[1], 't', ARGV[2])
trim(KEYS[1], KEYS[2], ARGV[3], ARGV[4])
-- Live readers learn which stream changed from the group's notify stream (reader.rs).
redis.call('XADD', KEYS[4], 'MAXLEN', '~', 10000, '*', 's', KEYS[1])
local v = id .. ' ' .. ARGV[2]
if ARGV[5] ~= '' then redis.call('SET', KEYS[3], v, 'EX', ARGV[5]) end
return {v, 0}
