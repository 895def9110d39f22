-- Who is present in one topic.
-- KEYS: entries (hash), expiries (zset), users (hash). ARGV: most entries.
-- Returns {users present, entry JSON...}: the connections whose lease has
-- not ended, oldest lease first.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. string.format('%d', now), '+inf', 'LIMIT', 0, tonumber(ARGV[1]))
local out = {redis.call('HLEN', KEYS[3])}
if #ids > 0 then
  local vals = redis.call('HMGET', KEYS[1], unpack(ids))
  for i = 1, #ids do
    if vals[i] then out[#out + 1] = vals[i] end
  end
end
return out
