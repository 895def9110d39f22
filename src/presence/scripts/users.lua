-- Counts users in and out of presence topics across all of them.
-- KEYS: the users hash (user -> topics present in).
-- ARGV: how many joined, the users who joined a topic, then those who left
-- one. Returns {{users now online}, {users now offline}}.
local nj = tonumber(ARGV[1])
local online, offline = {}, {}
for i = 2, nj + 1 do
  if redis.call('HINCRBY', KEYS[1], ARGV[i], 1) == 1 then online[#online + 1] = ARGV[i] end
end
for i = nj + 2, #ARGV do
  local n = redis.call('HINCRBY', KEYS[1], ARGV[i], -1)
  if n <= 0 then
    redis.call('HDEL', KEYS[1], ARGV[i])
    if n == 0 then offline[#offline + 1] = ARGV[i] end
  end
end
return {online, offline}
