-- Live read: for each topic, atomically, its trim marker, whether the last
-- id delivered is still in the stream, and the entries after it.
-- KEYS: stream 1, marker 1, stream 2, marker 2, … ARGV: entry budget, then
-- the last id delivered of each topic. Returns one {exists, trimmed-through
-- or '', present, entries} per topic read; reading stops when the budget is
-- spent (the topics left out were not read).
local budget = tonumber(ARGV[1])
local out = {}
for i = 1, #KEYS / 2 do
  if budget <= 0 then break end
  local stream, after = KEYS[2 * i - 1], ARGV[i + 1]
  local trimmed = redis.call('GET', KEYS[2 * i]) or ''
  if redis.call('EXISTS', stream) == 0 then
    out[i] = {0, trimmed, 0, {}}
  else
    local present = 0
    if #redis.call('XRANGE', stream, after, after) > 0 then present = 1 end
    local entries = redis.call('XRANGE', stream, '(' .. after, '+', 'COUNT', budget)
    budget = budget - #entries
    out[i] = {1, trimmed, present, entries}
  end
end
return out
