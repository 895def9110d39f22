-- Shared by both scripts (prepended to each): trim(stream, marker, maxlen,
-- minid) trims `stream` to `maxlen` entries ('' = no limit) and drops
-- entries older than `minid` ('' = none), recording the newest trimmed id in
-- `marker` (Redis does not remember what trimming removed; gaps need it).
local function trim(stream, marker, maxlen, minid)
  local gone = nil
  if maxlen ~= '' then
    local excess = redis.call('XLEN', stream) - tonumber(maxlen)
    if excess > 0 then
      local old = redis.call('XRANGE', stream, '-', '+', 'COUNT', excess)
      gone = old[#old][1]
      redis.call('XTRIM', stream, 'MAXLEN', maxlen)
    end
  end
  if minid ~= '' then
    -- Forward from the oldest entry: usually nothing has expired and this
    -- touches one node (a reverse scan would walk the whole stream).
    local old = redis.call('XRANGE', stream, '-', '(' .. minid)
    if #old > 0 then
      gone = old[#old][1]
      redis.call('XTRIM', stream, 'MINID', minid)
    end
  end
  if gone then redis.call('SET', marker, gone) end
end
