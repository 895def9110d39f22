-- Removes the expired presence entries of one key group's due topics,
-- atomically: the caller that removed an entry is the one that announces its
-- leave, so each leave is announced once across processes.
-- KEYS: the group's index (zset topic -> earliest lease end, ms).
-- ARGV: the group's key tag, channel, most topics per call.
-- Publishes the leaves (a user's last connection) per topic on the channel;
-- returns {{topic, vacated (1/0), {users who left}}...} for the topics that
-- lost entries.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', now), 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, topic in ipairs(due) do
  local ek, xk, uk = ARGV[1] .. ':p:' .. topic, ARGV[1] .. ':px:' .. topic, ARGV[1] .. ':pu:' .. topic
  local gone = redis.call('ZRANGEBYSCORE', xk, '-inf', string.format('%d', now))
  local leaves, left = {}, {}
  for _, client in ipairs(gone) do
    local json = redis.call('HGET', ek, client)
    redis.call('ZREM', xk, client)
    if json then
      redis.call('HDEL', ek, client)
      local user = cjson.decode(json).user
      if redis.call('HINCRBY', uk, user, -1) <= 0 then
        redis.call('HDEL', uk, user)
        leaves[#leaves + 1] = json
        left[#left + 1] = user
      end
    end
  end
  local users = redis.call('HLEN', uk)
  if #leaves > 0 then
    redis.call('PUBLISH', ARGV[2], '{"topic":' .. cjson.encode(topic) .. ',"users":' .. users ..
      ',"joins":[],"leaves":[' .. table.concat(leaves, ',') .. ']}')
  end
  local first = redis.call('ZRANGE', xk, 0, 0, 'WITHSCORES')
  if first[2] then
    redis.call('ZADD', KEYS[1], first[2], topic)
  else
    redis.call('ZREM', KEYS[1], topic)
  end
  if #gone > 0 then
    local vacated = 0
    if users == 0 and #left > 0 then vacated = 1 end
    out[#out + 1] = {topic, vacated, left}
  end
end
return out
