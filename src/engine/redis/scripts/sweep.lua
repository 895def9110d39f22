-- Sweep (after trim.lua): trims by age the topics of one key group whose
-- oldest entry has expired, so idle topics lose old entries too. The age
-- index scores each topic by when its oldest entry expires (that entry's ms
-- plus the topic's own max age), so a topic with a short max age is due on
-- time whatever the others' ages.
-- KEYS: the group's age index (topic -> when its oldest entry expires, ms).
-- ARGV[1]: the group's key tag; ARGV[2]: mode.
--   'due':  ARGV[3] = most topics; returns the due topics (Redis's clock).
--   'trim': ARGV[3..] = topic, max age ms pairs (each topic's own age, from
--           the shared config); trims each and re-scores it (or forgets it
--           when its stream is gone or empty); returns how many were given.
if ARGV[2] == 'due' then
  return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. string.format('%d', now_ms()),
    'LIMIT', 0, tonumber(ARGV[3]))
end
local n = 0
for i = 3, #ARGV - 1, 2 do
  local topic, age = ARGV[i], ARGV[i + 1]
  local stream = ARGV[1] .. ':t:' .. topic
  local first = nil
  if redis.call('EXISTS', stream) == 1 then
    first = trim(stream, ARGV[1] .. ':m:' .. topic, '', age)
  end
  if first then
    redis.call('ZADD', KEYS[1], id_ms(first) + tonumber(age), topic)
  else
    redis.call('ZREM', KEYS[1], topic)
  end
  n = n + 1
end
return n
