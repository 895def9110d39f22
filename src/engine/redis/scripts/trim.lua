-- Shared by both scripts (prepended to each).

-- Redis's clock in ms: the clock its stream ids come from.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The ms part of an id.
local function id_ms(id)
  return tonumber(string.match(id, '^(%d+)'))
end

-- The oldest entry's id, or nil.
local function first_id(stream)
  local e = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)[1]
  return e and e[1]
end

-- Count trimming removes at most this many entries per call (it reads them
-- to learn the newest one): a lowered max_len converges over publishes.
local TRIM_STEP = 100

-- trim(stream, marker, maxlen, maxage) trims `stream` to `maxlen` entries
-- ('' = no limit) and drops entries older than `maxage` ms of Redis time,
-- recording the newest trimmed id in `marker` (Redis does not remember what
-- trimming removed; gaps need it), which expires with the stream. Returns
-- the id of the oldest entry left, or nil.
local function trim(stream, marker, maxlen, maxage)
  local gone = nil
  if maxlen ~= '' then
    local len = redis.call('XLEN', stream)
    local excess = len - tonumber(maxlen)
    if excess > 0 then
      local n = math.min(excess, TRIM_STEP)
      local old = redis.call('XRANGE', stream, '-', '+', 'COUNT', n)
      gone = old[#old][1]
      redis.call('XTRIM', stream, 'MAXLEN', len - n)
    end
  end
  local first = first_id(stream)
  local min_ms = now_ms() - tonumber(maxage)
  if first and id_ms(first) < min_ms then
    -- The newest expired entry, found from the cut point (one seek).
    local minid = string.format('%d-0', min_ms)
    local old = redis.call('XREVRANGE', stream, '(' .. minid, '-', 'COUNT', 1)
    if #old > 0 then
      gone = old[1][1]
      redis.call('XTRIM', stream, 'MINID', minid)
      first = first_id(stream)
    end
  end
  if gone then
    redis.call('SET', marker, gone)
    local ttl = redis.call('PTTL', stream)
    if ttl > 0 then redis.call('PEXPIRE', marker, ttl) end
  end
  return first
end
