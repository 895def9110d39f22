-- History: trim by age, then the stream's state and, per mode, entries.
-- KEYS: stream, trim marker. ARGV: mode (after | newest | info | check), after
-- id, count, minid. Returns {0} without a stream, else
-- {1, last-generated-id, trimmed-through, first-entry-id, entries,
-- whether the `after` id itself is still in the stream}.
if redis.call('EXISTS', KEYS[1]) == 0 then return {0} end
trim(KEYS[1], KEYS[2], '', ARGV[4])
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local last, first = '', ''
for i = 1, #info, 2 do
  local k = info[i]
  if k == 'last-generated-id' then last = info[i + 1]
  elseif k == 'first-entry' then
    local fe = info[i + 1]
    if fe then first = fe[1] end
  end
end
local trimmed = redis.call('GET', KEYS[2]) or ''
local present = 0
if (ARGV[1] == 'after' or ARGV[1] == 'check') and #redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2]) > 0 then
  present = 1
end
local entries = {}
if ARGV[1] == 'newest' then
  entries = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', ARGV[3])
elseif ARGV[1] == 'after' then
  entries = redis.call('XRANGE', KEYS[1], '(' .. ARGV[2], '+', 'COUNT', ARGV[3])
end
return {1, last, trimmed, first, entries, present}
