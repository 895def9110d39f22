-- Applies one process's changes to one topic's presence entries, atomically.
-- KEYS: entries (hash client -> entry JSON), expiries (zset client -> lease
-- end, ms), users (hash user -> connections), the group's index (zset topic
-- -> earliest lease end).
-- ARGV: topic, channel, ttl ms, grace ms, count mode (1/0), then per op:
-- 'u' (upsert: add or refresh) or 'c' (close: keep for grace), client,
-- user, entry JSON.
-- Publishes the joins (a user's first connection) on the channel; returns
-- {occupied (1/0), users present, {users who joined}}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local topic, channel = ARGV[1], ARGV[2]
local ttl, grace, count = tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5] == '1'
local before = redis.call('HLEN', KEYS[3])
local joins, joined = {}, {}
for i = 6, #ARGV, 4 do
  local op, client, user, json = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  if op == 'u' then
    if redis.call('HSETNX', KEYS[1], client, json) == 1 then
      if redis.call('HINCRBY', KEYS[3], user, 1) == 1 then
        joins[#joins + 1] = json
        joined[#joined + 1] = user
      end
    end
    redis.call('ZADD', KEYS[2], string.format('%d', now + ttl), client)
  else
    redis.call('ZADD', KEYS[2], 'XX', string.format('%d', now + grace), client)
  end
end
local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if first[2] then
  redis.call('ZADD', KEYS[4], first[2], topic)
end
-- Keys of a topic nobody touches for a day go (a sweep would have emptied
-- them long before while any process runs).
for k = 1, 4 do
  redis.call('PEXPIRE', KEYS[k], 86400000)
end
local users = redis.call('HLEN', KEYS[3])
if #joins > 0 or (count and users ~= before) then
  local list = count and '' or table.concat(joins, ',')
  redis.call('PUBLISH', channel, '{"topic":' .. cjson.encode(topic) .. ',"users":' .. users ..
    ',"joins":[' .. list .. '],"leaves":[]}')
end
local occupied = 0
if before == 0 and users > 0 then occupied = 1 end
return {occupied, users, joined}
