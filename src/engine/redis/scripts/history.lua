-- History: trim by age, then the stream's state and, per mode, entries.
-- KEYS: stream, trim marker. ARGV: mode (after | newest | info | check),
-- after id, start id (the successor of `after`; '' when it has none), count,
-- max age ms, page budget in bytes of data. Returns {0} without a stream,
-- else {1, last id, trimmed-through, first-entry-id, entries, whether the
-- `after` id itself is still in the stream, whether the page was cut to its
-- budget}. The last id (newest entry, or the last generated id of an empty
-- stream) is read only for info and check, and for an empty stream.

-- Up to `count` entries of `cmd` (XRANGE or XREVRANGE) from `from` to `to`,
-- read in small batches; stops before the entry that would take the data
-- past `budget` bytes (the first entry always goes). Returns the entries and
-- 1 when it stopped for the budget.
local function page(stream, cmd, from, to, count, budget)
  local out, bytes = {}, 0
  while #out < count do
    local want = math.min(count - #out, 64)
    local batch = redis.call(cmd, stream, from, to, 'COUNT', want)
    for _, e in ipairs(batch) do
      local size = 64
      for i = 2, #e[2], 2 do size = size + #e[2][i] end
      if #out > 0 and bytes + size > budget then return out, 1 end
      out[#out + 1] = e
      bytes = bytes + size
    end
    if #batch < want then break end
    from = '(' .. batch[#batch][1]
  end
  return out, 0
end

if redis.call('EXISTS', KEYS[1]) == 0 then return {0} end
local first = trim(KEYS[1], KEYS[2], '', ARGV[5]) or ''
local mode = ARGV[1]
local last = ''
if first == '' then
  -- Empty: XINFO carries no entries to copy.
  local info = redis.call('XINFO', 'STREAM', KEYS[1])
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then last = info[i + 1] end
  end
elseif mode == 'info' or mode == 'check' then
  last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1][1]
end
local trimmed = redis.call('GET', KEYS[2]) or ''
local present = 0
if (mode == 'after' or mode == 'check') and #redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2]) > 0 then
  present = 1
end
local entries, cut = {}, 0
local count, budget = tonumber(ARGV[4]), tonumber(ARGV[6])
if mode == 'newest' then
  entries, cut = page(KEYS[1], 'XREVRANGE', '+', '-', count, budget)
elseif mode == 'after' and ARGV[3] ~= '' then
  entries, cut = page(KEYS[1], 'XRANGE', ARGV[3], '+', count, budget)
end
return {1, last, trimmed, first, entries, present, cut}
