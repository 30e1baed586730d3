#!lua
-- One write flush of one partition, run atomically (see shared/bus/program.py).
--
-- ARGV is a list of frames, one per op:  code, key count, arg count, key indexes..., args...
-- Keys are passed by their index in KEYS, so Redis Cluster sees every key the script touches.
-- Each op runs under pcall, so one bad op cannot abort the rest; the reply holds one result
-- per op (a failed op's result is the string "ERR <reason>", a fenced one's "FENCED").
--
-- The op layouts below are the contract with OPS in program.py: each "-- op" line must match
-- one OpSpec there, and a unit test checks that they do.

local call = redis.call
local OPS = {}

-- op X(key | maxlen, field, value): XADD (maxlen '' = uncapped, as a control stream must be:
-- its pending entries are ownership claims). The result is the new entry id.
local function add(key, maxlen, field, value)
  if maxlen == '' then
    return call('XADD', key, '*', field, value)
  end
  return call('XADD', key, 'MAXLEN', '~', maxlen, '*', field, value)
end
OPS.X = function(k, a) return add(k[1], a[1], a[2], a[3]) end

-- op M(key | maxlen, field, values...): one XADD per value, to one stream. The result is the count.
OPS.M = function(k, a)
  for j = 3, #a do add(k[1], a[1], a[2], a[j]) end
  return #a - 2
end

-- op G(src, dst | group, id, maxlen, field, value, extra_ids...): the gate. XACK id; only if that
-- ack removed it from the group's pending list, ack the extra ids too (e.g. the audio chunks of
-- an utterance) and XADD value to dst (value '' = ack only). 1 if it wrote, 0 if id was not
-- pending (acked before: a retry, a zombie, a second owner): exactly-once effects. A dst that
-- is no stream fails the op before anything is acked (the writer then dead-letters the source).
OPS.G = function(k, a)
  if a[5] ~= '' then
    -- An effect that cannot be written must not cost its source entry: check before the ack.
    local kind = call('TYPE', k[2])['ok']
    if kind ~= 'stream' and kind ~= 'none' then
      error('WRONGTYPE ' .. k[2] .. ' holds a ' .. kind .. ', not a stream')
    end
  end
  if call('XACK', k[1], a[1], a[2]) ~= 1 then
    return 0
  end
  for j = 6, #a do call('XACK', k[1], a[1], a[j]) end
  if a[5] ~= '' then add(k[2], a[3], a[4], a[5]) end
  return 1
end

-- op K(src | group, ids...): XACK the ids. The result is how many were pending.
OPS.K = function(k, a)
  local acked = 0
  for j = 2, #a do acked = acked + call('XACK', k[1], a[1], a[j]) end
  return acked
end

-- op F(control | group, consumer, id, ops): the fence of a conversation's writes. The next `ops`
-- frames run only if control entry id is still pending for consumer in group, i.e. this worker
-- still holds the conversation's claim; else they are skipped (each result is "FENCED") and the
-- result is 0: a peer took the conversation over while this worker was paused or cut off, and
-- what it queued meanwhile must not be written. 1 if the claim holds. Checked once per claim
-- per program (a program is one partition: one control stream). An op of its own, so that no
-- other op's layout changes.
local held = {}
OPS.F = function(k, a)
  local h = held[a[3]]
  if h == nil then
    local p = call('XPENDING', k[1], a[1], a[3], a[3], 1)
    h = (p[1] and p[1][2] == a[2]) and 1 or 0
    held[a[3]] = h
  end
  return h
end

-- op E(key | seconds): EXPIRE.
OPS.E = function(k, a) return call('EXPIRE', k[1], a[1]) end

-- op R(bell | maxlen, kind, ids): a doorbell ring, a hint that the named conversations' <kind>
-- streams got entries: XADD bell MAXLEN ~ maxlen * <kind> "<id> <id> ...".
OPS.R = function(k, a) return call('XADD', k[1], 'MAXLEN', '~', a[1], '*', a[2], a[3]) end

local out = {}
local fenced = 0  -- frames left to skip behind a fence that did not hold
local i, n = 1, #ARGV
while i <= n do
  local code, nkeys, nargs = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  local op = OPS[code]
  if op == nil or nkeys == nil or nargs == nil then
    return redis.error_reply('bad op frame ' .. tostring(code) .. ' at ' .. i)
  end
  local keys, args = {}, {}
  for j = 1, nkeys do keys[j] = KEYS[tonumber(ARGV[i + 2 + j])] end
  local base = i + 2 + nkeys
  for j = 1, nargs do args[j] = ARGV[base + j] end
  if fenced > 0 then
    fenced = fenced - 1
    out[#out + 1] = 'FENCED'
  else
    local ok, res = pcall(op, keys, args)
    if ok then
      out[#out + 1] = res
    else
      out[#out + 1] = 'ERR ' .. tostring(res)
    end
    if code == 'F' and res ~= 1 then
      fenced = tonumber(args[4])  -- not held, or not checkable (e.g. NOGROUP): write nothing behind it
    end
  end
  i = base + nargs + 1
end
return out
