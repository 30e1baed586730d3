-- Refresh this worker's ownership claims (see shared/runtime/leases.py).
-- KEYS[1] = a control stream; ARGV = group, consumer, control entry ids...
-- Re-claims (XCLAIM JUSTID: resets the idle time) only the entries this consumer still holds:
-- a blind XCLAIM would steal back a conversation a peer took over while this worker was paused.
-- Returns the ids this worker no longer holds (lost to a peer).
local lost = {}
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
  else
    table.insert(lost, ARGV[i])
  end
end
return lost
