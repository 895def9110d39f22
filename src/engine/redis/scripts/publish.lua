-- Publish: idempotency check, XADD, trim, expiry, idempotency key.
-- KEYS: stream, trim marker, idempotency key, idempotency index, the key
-- group's age index, the group's notify stream, the group's webhook outbox. ARGV: data, maxlen,
-- max age ms (the topic's), idempotency ttl ms ('' = no key), idempotency keys kept per topic,
-- topic, outbox bound ('' = the topic goes to no webhook), whether a coalescing key is given
-- ('' = none, '1' = the next argument), the coalescing key (stored as field k). Returns {"<id> <ts>", duplicate}, or {'', 2} when
-- the outbox is full (nothing stored); ts is the id's ms part (Redis's clock, never decreasing
-- within a topic).

-- Stores idempotency key `key` for `ttl` ms and indexes it by time in
-- `index`, forgetting the topic's oldest keys past `keep` (a bounded number
-- per call).
local function remember(key, index, v, ttl, keep)
  local now = now_ms()
  redis.call('SET', key, v, 'PX', ttl)
  redis.call('ZADD', index, now, key)
  redis.call('ZREMRANGEBYSCORE', index, '-inf', string.format('(%d', now - tonumber(ttl)))
  local over = math.min(redis.call('ZCARD', index) - tonumber(keep), TRIM_STEP)
  if over > 0 then
    local old = redis.call('ZRANGE', index, 0, over - 1)
    redis.call('DEL', unpack(old))
    redis.call('ZREMRANGEBYRANK', index, 0, over - 1)
  end
  redis.call('PEXPIRE', index, ttl)
end

if ARGV[4] ~= '' then
  local prev = redis.call('GET', KEYS[3])
  if prev then return {prev, 1} end
end
-- A message some webhook endpoint matches is recorded in the group's outbox in the same
-- script (never lost between the two); a full outbox refuses the publish instead.
if ARGV[7] ~= '' and redis.call('XLEN', KEYS[7]) >= tonumber(ARGV[7]) then return {'', 2} end
local id
if ARGV[8] ~= '' then
  id = redis.call('XADD', KEYS[1], '*', 'd', ARGV[1], 'k', ARGV[9])
else
  id = redis.call('XADD', KEYS[1], '*', 'd', ARGV[1])
end
if ARGV[7] ~= '' then redis.call('XADD', KEYS[7], '*', 't', ARGV[6], 'i', id, 'd', ARGV[1]) end
local first = trim(KEYS[1], KEYS[2], ARGV[2], ARGV[3])
-- An idle topic's keys vanish with its newest message; older entries go
-- when the sweep finds them due in the age index.
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
if first then redis.call('ZADD', KEYS[5], id_ms(first) + tonumber(ARGV[3]), ARGV[6]) end
-- The age index is shared by topics of different ages: its expiry only
-- ever moves later, so a short-lived topic never cuts a longer one's entry.
local index_ttl = redis.call('PTTL', KEYS[5])
if index_ttl == -1 or (index_ttl >= 0 and index_ttl < tonumber(ARGV[3])) then
  redis.call('PEXPIRE', KEYS[5], ARGV[3])
end
-- Live readers learn which stream changed from the group's notify stream
-- (reader.rs).
redis.call('XADD', KEYS[6], 'MAXLEN', '~', 10000, '*', 's', KEYS[1])
local v = id .. ' ' .. string.match(id, '^(%d+)')
if ARGV[4] ~= '' then remember(KEYS[3], KEYS[4], v, ARGV[4], ARGV[5]) end
return {v, 0}
