-- Sweep (after trim.lua): trims by age the topics of one key group whose
-- oldest entry has reached max age, so idle topics lose old entries too.
-- KEYS: the group's age index (topic -> when its oldest entry expires, ms).
-- ARGV: the group's key tag, max age ms, most topics per call. Returns how
-- many topics were due.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. string.format('%d', now_ms()),
  'LIMIT', 0, tonumber(ARGV[3]))
for _, topic in ipairs(due) do
  local stream = ARGV[1] .. ':t:' .. topic
  local first = nil
  if redis.call('EXISTS', stream) == 1 then
    first = trim(stream, ARGV[1] .. ':m:' .. topic, '', ARGV[2])
  end
  if first then
    redis.call('ZADD', KEYS[1], id_ms(first) + tonumber(ARGV[2]), topic)
  else
    redis.call('ZREM', KEYS[1], topic)
  end
end
return #due
