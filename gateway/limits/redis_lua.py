"""The Lua scripts behind `RedisLimiter`: each one check-and-update, atomic in Redis.

Kept apart from the Python that calls them so each side reads on its own. `ADMIT` checks
every limit of one API key and, only if all pass, counts, reserves and leases; `SETTLE`
corrects reservations (one or many) to real usage and drops their leases; `USAGE` reads the counts;
`RENEW` extends this process's live leases. All keys of one API key carry the same
`{key id}` hash tag, so every script touches one Redis Cluster slot.
"""

from __future__ import annotations

# Shared by the scripts. Numbers are Lua doubles: unix ms (1.7e12) and token counts are far
# below 2^53. Fractions go back to Python as strings, since Redis truncates Lua numbers in
# replies to integers.
PRELUDE = """
local function clock(override)
  if override ~= nil and override ~= '' then return tonumber(override) end
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

-- days since 1970-01-01 <-> proleptic Gregorian date (H. Hinnant's civil algorithms)
local function civil(z)
  z = z + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
                          - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return y, m, d
end

local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = m > 2 and m - 3 or m + 9
  local doy = math.floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

-- the UTC day and month containing unix time t: field names, and when each ends
local function periods(t)
  local day = math.floor(t / 86400)
  local y, m, d = civil(day)
  local ny, nm = y, m + 1
  if nm == 13 then ny, nm = y + 1, 1 end
  return string.format('day:%04d-%02d-%02d', y, m, d), (day + 1) * 86400,
         string.format('month:%04d-%02d', y, m), days_from_civil(ny, nm, 1) * 86400
end

-- a key's first admission of a day (or of a settle-emptied one; either way harmless): drop
-- the quota hash's fields of older periods, keeping this and the previous day and month
-- for settles that straddle midnight, and let the hash live to a day past the month's end
local function new_day(quota_key, now)
  local day_f, _, month_f, month_end = periods(now)
  if redis.call('HLEN', quota_key) > 4 then
    local prev_day = periods(now - 86400)
    local y, m = civil(math.floor(now / 86400))
    local _, _, prev_month = periods((days_from_civil(y, m, 1) - 1) * 86400)
    local keep = {[day_f] = true, [month_f] = true, [prev_day] = true, [prev_month] = true,
                  ['usd:' .. day_f] = true, ['usd:' .. month_f] = true,
                  ['usd:' .. prev_day] = true, ['usd:' .. prev_month] = true}
    local old = {}
    for _, field in ipairs(redis.call('HKEYS', quota_key)) do
      if not keep[field] then old[#old + 1] = field end
    end
    if #old > 0 then redis.call('HDEL', quota_key, unpack(old)) end
  end
  -- relative, so a test's clock override gets the same lifetime as the server's TIME
  redis.call('EXPIRE', quota_key, string.format('%d', math.ceil(month_end + 86400 - now)))
end

-- an admission's reply (ADMIT's, and each of ADMIT_MANY's): one bulk string,
-- space-separated (cheaper to read than an array of eight replies): admitted (1 or 0), the
-- denying limit ('' when admitted), its wait, now, the rpm window's count and reset, the
-- tpm window's count and reset; times as whole microseconds: the digits of '%.6f' without
-- its point, which Python reads as int / 1e6, the same double as float('%.6f') (both the
-- correctly rounded quotient) at a third of the cost
local function us(x)
  return (string.gsub(string.format('%.6f', x), '%.', '', 1))
end
local function admit_reply(denied, wait, now, rt, reset_r, tt, reset_t)
  return string.format('%d %s %s %s %d %s %d %s', denied == '' and 1 or 0, denied, us(wait),
                       us(now), rt, us(reset_r), tt, us(reset_t))
end

-- an admission's denial (ADMIT's, and ADMIT_MANY's, which stops at its first): the binding
-- limit keeps the caller out longest; on a tie the first checked wins
local denied, wait = '', 0
local function deny(name, seconds)
  if denied == '' or seconds > wait then denied, wait = name, seconds end
end

-- rpm / tpm windows: a hash each (unix second -> count, 'sum' -> the count of the whole
-- window) and one sorted set of the seconds that have buckets (both windows get theirs
-- together, at admission). Moving the window on reads only the buckets that left it, and
-- the totals are one field each, so a busy key (60 buckets) costs no more than an idle one.
local function slide(seconds_key, window_keys, now_s)
  local edge = '(' .. (now_s - 59)
  local gone = redis.call('ZRANGEBYSCORE', seconds_key, '-inf', edge)
  if #gone == 0 then return end
  for _, key in ipairs(window_keys) do
    local counts = redis.call('HMGET', key, unpack(gone))
    local total = 0
    for i = 1, #counts do total = total + (tonumber(counts[i]) or 0) end
    redis.call('HDEL', key, unpack(gone))
    if total ~= 0 then redis.call('HINCRBY', key, 'sum', -total) end
  end
  redis.call('ZREMRANGEBYSCORE', seconds_key, '-inf', edge)
end

local function total(key)
  return tonumber(redis.call('HGET', key, 'sum')) or 0
end

-- seconds from now until the window's total is below threshold: walks the buckets from
-- the oldest, a few at a time (the answer is nearly always among the first); `first`, when
-- given, is the first few (ZRANGE seconds_key 0 7), read already
local function wait_below(seconds_key, key, total, threshold, now, first)
  if total < threshold then return 0 end
  local left, from = total, 0
  while true do
    local seconds = (from == 0 and first) or redis.call('ZRANGE', seconds_key, from, from + 7)
    if #seconds == 0 then return 0 end
    local counts = redis.call('HMGET', key, unpack(seconds))
    for i = 1, #seconds do
      left = left - (tonumber(counts[i]) or 0)
      if left < threshold then return tonumber(seconds[i]) + 60 - now end
    end
    from = from + 8
  end
end
"""

# Settles any number of admissions in one call (the ones that ended close together), so a
# burst of N costs one command, not N. Used by SETTLE, and by ADMIT for the settles that
# were waiting when an admission left (they run first, as they would have in the same write).
SETTLE_MANY = """
-- KEYS from `k` on: tpm, quota, leases of each settle in turn (one API key's, or several
--   keys' on one Redis; on a Cluster the caller puts one slot's in a call)
-- ARGV from `a` on: admission unix time, used - reserved tokens, lease id, used - reserved
--   nano-USD of each settle in turn
local function settle_many(k, a)
  -- only buckets and periods that still exist: one the window or the TTL already dropped
  -- counts nothing any more, and must not come back; returns what the field changed by (a
  -- count never goes below 0); `by` is a number or, for nano-USD, the caller's decimal
  -- string (HINCRBY stays exact)
  local function adjust(key, field, by)
    if redis.call('HEXISTS', key, field) == 0 then return 0 end
    local new = redis.call('HINCRBY', key, field, by)
    by = tonumber(by)
    if new >= 0 then return by end
    redis.call('HSET', key, field, 0)
    return by - new
  end
  while k < #KEYS do
    local tpm_key, quota_key = KEYS[k + 1], KEYS[k + 2]
    redis.call('ZREM', KEYS[k + 3], ARGV[a + 3])
    local delta, spent = tonumber(ARGV[a + 2]), ARGV[a + 4]
    if delta ~= 0 or spent ~= '0' then
      local at = tonumber(ARGV[a + 1])
      local day_f, _, month_f = periods(at)
      if delta ~= 0 then
        local change = adjust(tpm_key, string.format('%d', math.floor(at)), delta)
        if change ~= 0 then redis.call('HINCRBY', tpm_key, 'sum', change) end
        adjust(quota_key, day_f, delta)
        adjust(quota_key, month_f, delta)
      end
      if spent ~= '0' then
        adjust(quota_key, 'usd:' .. day_f, spent)
        adjust(quota_key, 'usd:' .. month_f, spent)
      end
    end
    k, a = k + 3, a + 4
  end
end
"""

ADMIT = (
    PRELUDE
    + SETTLE_MANY
    + """
-- KEYS: rpm, tpm, quota, leases, seconds, then those of any settles (see SETTLE_MANY)
-- ARGV: rpm, tpm, max_concurrent, daily, monthly, daily nano-USD, monthly nano-USD (-1: not
--       limited), lease ttl ms (the key's, the same on every call), then tokens, cost in
--       nano-USD, lease id, time override ('' : the server's TIME), then the settles'
-- Every admission runs this, so it reads each hash once (HMGET) and writes it once (HSET),
-- and one look at the oldest seconds serves the window's slide and the resets.
if #KEYS > 5 then settle_many(5, 12) end
local rpm, tpm, conc = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local daily, monthly = tonumber(ARGV[4]), tonumber(ARGV[5])
local daily_usd, monthly_usd, ttl = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local tokens, cost, lease = tonumber(ARGV[9]), ARGV[10], ARGV[11]
local now = clock(ARGV[12])
local now_s = math.floor(now)
local now_ms = now * 1000
local second = string.format('%d', now_s)

-- the oldest seconds that have buckets (ZRANGE seconds 0 7), read once and again only
-- after the set changed
local oldest = nil
local function first_seconds()
  if oldest == nil then oldest = redis.call('ZRANGE', KEYS[5], 0, 7) end
  return oldest
end

-- seconds until the allowance grows (see MemoryLimiter's _Window.reset)
local function reset(key, count, limit)
  if limit < 0 or count <= 0 then return 0 end
  return wait_below(KEYS[5], key, count, math.min(limit, count), now, first_seconds())
end

redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now_ms)
local open = redis.call('ZCARD', KEYS[4])
if conc >= 0 and open >= conc then deny('max_concurrent', 1) end
local seconds = first_seconds()
if #seconds > 0 and tonumber(seconds[1]) < now_s - 59 then
  slide(KEYS[5], {KEYS[1], KEYS[2]}, now_s)
  oldest = nil
end
local r = redis.call('HMGET', KEYS[1], 'sum', second)
local t = redis.call('HMGET', KEYS[2], 'sum', second)
local rt, tt = tonumber(r[1]) or 0, tonumber(t[1]) or 0
if rpm >= 0 and rt >= rpm then deny('rpm', reset(KEYS[1], rt, rpm)) end
if tpm >= 0 and tt >= tpm then deny('tpm', reset(KEYS[2], tt, tpm)) end
local day_f, day_end, month_f, month_end = periods(now)
-- spend: integer nano-USD in fields 'usd:day:...' / 'usd:month:...' of the same hash,
-- added with HINCRBY from the caller's decimal string (exact: no double is written back)
local usd_day_f, usd_month_f = 'usd:' .. day_f, 'usd:' .. month_f
local used = redis.call('HMGET', KEYS[3], day_f, month_f, usd_day_f, usd_month_f)
local day_used, month_used = tonumber(used[1]) or 0, tonumber(used[2]) or 0
local day_spent, month_spent = tonumber(used[3]) or 0, tonumber(used[4]) or 0
if daily >= 0 and day_used >= daily then deny('daily_tokens', day_end - now) end
if monthly >= 0 and month_used >= monthly then deny('monthly_tokens', month_end - now) end
if daily_usd >= 0 and day_spent >= daily_usd then deny('daily_usd', day_end - now) end
if monthly_usd >= 0 and month_spent >= monthly_usd then deny('monthly_usd', month_end - now) end

local reset_r, reset_t
if denied == '' then
  local r_now, t_now = tonumber(r[2]) or 0, tonumber(t[2]) or 0
  rt, tt = rt + 1, tt + tokens
  redis.call('HSET', KEYS[1], second, r_now + 1, 'sum', rt)
  redis.call('HSET', KEYS[2], second, t_now + tokens, 'sum', tt)
  if r_now == 0 then
    -- the first admission of a second: the 61 s lifetimes start from the newest second
    redis.call('ZADD', KEYS[5], now_s, second)
    for i = 1, 2 do redis.call('EXPIRE', KEYS[i], 61) end
    redis.call('EXPIRE', KEYS[5], 61)
    oldest = nil
  end
  redis.call('HSET', KEYS[3], day_f, day_used + tokens, month_f, month_used + tokens)
  if cost ~= '0' then
    redis.call('HINCRBY', KEYS[3], usd_day_f, cost)
    redis.call('HINCRBY', KEYS[3], usd_month_f, cost)
  end
  if day_used == 0 then
    -- the first admission of a day (or of a settle-emptied one; either way harmless)
    new_day(KEYS[3], now)
  end
  redis.call('ZADD', KEYS[4], string.format('%.3f', now_ms + ttl), lease)
  redis.call('PEXPIRE', KEYS[4], string.format('%d', ttl + 1000))
  -- rpm buckets only ever grow, so with the count within the limit the allowance grows when
  -- the oldest second leaves the window
  if rpm >= 0 and rt <= rpm then
    reset_r = tonumber(first_seconds()[1]) + 60 - now
  end
end
reset_r = reset_r or reset(KEYS[1], rt, rpm)
reset_t = reset(KEYS[2], tt, tpm)
return admit_reply(denied, wait, now, rt, reset_r, tt, reset_t)
"""
)

SETTLE = (
    PRELUDE
    + SETTLE_MANY
    + """
-- KEYS, ARGV: SETTLE_MANY's, from the start
settle_many(0, 0)
return 1
"""
)

USAGE = (
    PRELUDE
    + """
-- KEYS: rpm, tpm, quota, leases, seconds; ARGV: time override ('' : the server's TIME)
local now = clock(ARGV[1])
slide(KEYS[5], {KEYS[1], KEYS[2]}, math.floor(now))
local rt, tt = total(KEYS[1]), total(KEYS[2])
local day_f, _, month_f = periods(now)
local used = redis.call('HMGET', KEYS[3], day_f, month_f, 'usd:' .. day_f, 'usd:' .. month_f)
local open = redis.call('ZCOUNT', KEYS[4], '(' .. string.format('%.3f', now * 1000), '+inf')
return {rt, tt, tonumber(used[1]) or 0, tonumber(used[2]) or 0, open,
        tonumber(used[3]) or 0, tonumber(used[4]) or 0}
"""
)

RENEW = (
    PRELUDE
    + """
-- KEYS: leases; ARGV: lease ttl ms, time override, lease ids...
local ttl = tonumber(ARGV[1])
local expiry = string.format('%.3f', clock(ARGV[2]) * 1000 + ttl)
for i = 3, #ARGV do
  -- XX: a lease settled (removed) meanwhile must stay removed
  redis.call('ZADD', KEYS[1], 'XX', expiry, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], string.format('%d', ttl + 1000))
return 1
"""
)

ADMIT_MANY = (
    PRELUDE
    + SETTLE_MANY
    + """
-- Admissions of one API key waiting at the same moment, in order, with the results and the
-- Redis state of ADMIT called for each in turn at one instant. The counts live in locals
-- across the batch: each hash is read once and written once, at the end.
-- KEYS: ADMIT's (rpm, tpm, quota, leases, seconds, then those of any settles)
-- ARGV: ADMIT's first eight (the key's limits and lease ttl ms), the time override ('' :
--       the server's TIME), the number of admissions n, then tokens, cost in nano-USD and
--       lease id of each in turn, then the settles' (see SETTLE_MANY)
-- Returns one ADMIT reply per admission, in order.
-- What no admission's checks depend on: they read only counts, never the admission's own
-- tokens or cost, so the first denial leaves the counts as they were and every later
-- admission is denied with the same reply; the batch is a run of admitted ones, then
-- denied ones. Exact while counts stay below 2^53 (nano-USD sums are added as doubles).
local n = tonumber(ARGV[10])
if #KEYS > 5 then settle_many(5, 10 + 3 * n) end
local rpm, tpm, conc = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local daily, monthly = tonumber(ARGV[4]), tonumber(ARGV[5])
local daily_usd, monthly_usd, ttl = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local now = clock(ARGV[9])
local now_s = math.floor(now)
local now_ms = now * 1000
local second = string.format('%d', now_s)

-- the window's seconds as they were before the batch (it adds none but `second`, merged
-- in at its place by `wait_below_here`), oldest first, read 8 at a time as walks need them,
-- and each window's counts of them (one HMGET per window and 8 seconds)
local secs, secs_all = {}, false
local function secs_to(i)
  while i > #secs and not secs_all do
    local more = redis.call('ZRANGE', KEYS[5], #secs, #secs + 7)
    for j = 1, #more do secs[#secs + 1] = more[j] end
    if #more < 8 then secs_all = true end
  end
  return secs[i]
end
local counts = {{}, {}}
local function count_at(w, i)
  local c = counts[w]
  if c[i] == nil then
    local from = i - (i - 1) % 8
    local names = {}
    for j = from, math.min(from + 7, #secs) do names[#names + 1] = secs[j] end
    local got = redis.call('HMGET', KEYS[w], unpack(names))
    for j = 1, #names do c[from + j - 1] = tonumber(got[j]) or 0 end
  end
  return c[i]
end

-- PRELUDE's wait_below for window w (1 rpm, 2 tpm) whose current second holds `cur`: the
-- same walk from the oldest bucket. The current second is walked at its place whether or
-- not it has a bucket: with none its count is 0, and a walk stops only where a count
-- brings the total below the threshold, so a 0 changes nothing.
local function wait_below_here(w, total, threshold, cur)
  if total < threshold then return 0 end
  local left, i, merged = total, 1, false
  while true do
    local s = secs_to(i)
    if not merged and (s == nil or tonumber(s) >= now_s) then
      merged = true
      if s ~= nil and tonumber(s) == now_s then i = i + 1 end
      left = left - cur
      if left < threshold then return now_s + 60 - now end
    elseif s == nil then
      return 0
    else
      left = left - count_at(w, i)
      if left < threshold then return tonumber(s) + 60 - now end
      i = i + 1
    end
  end
end

local function reset(w, count, limit, cur)
  if limit < 0 or count <= 0 then return 0 end
  return wait_below_here(w, count, math.min(limit, count), cur)
end

redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now_ms)
local open = redis.call('ZCARD', KEYS[4])
local first = secs_to(1)
if first ~= nil and tonumber(first) < now_s - 59 then
  slide(KEYS[5], {KEYS[1], KEYS[2]}, now_s)
  secs, secs_all = {}, false
end
local r = redis.call('HMGET', KEYS[1], 'sum', second)
local t = redis.call('HMGET', KEYS[2], 'sum', second)
local rt, tt = tonumber(r[1]) or 0, tonumber(t[1]) or 0
local r_now, t_now = tonumber(r[2]) or 0, tonumber(t[2]) or 0
local r_was = r_now
local day_f, day_end, month_f, month_end = periods(now)
local usd_day_f, usd_month_f = 'usd:' .. day_f, 'usd:' .. month_f
local used = redis.call('HMGET', KEYS[3], day_f, month_f, usd_day_f, usd_month_f)
local day_used, month_used = tonumber(used[1]) or 0, tonumber(used[2]) or 0
local day_spent, month_spent = tonumber(used[3]) or 0, tonumber(used[4]) or 0
-- what this batch has not written to the quota hash yet: the token totals (HSET) and the
-- spend since the last write (HINCRBY of its sum, when any admission had a cost)
local quota_dirty, spend_dirty, unspent = false, false, 0
local function write_quota()
  if quota_dirty then
    redis.call('HSET', KEYS[3], day_f, day_used, month_f, month_used)
    quota_dirty = false
  end
  if spend_dirty then
    local by = string.format('%d', unspent)
    redis.call('HINCRBY', KEYS[3], usd_day_f, by)
    redis.call('HINCRBY', KEYS[3], usd_month_f, by)
    spend_dirty, unspent = false, 0
  end
end

local replies, leases = {}, {}
local i = 0
while i < n do
  local a = 10 + 3 * i
  i = i + 1
  if conc >= 0 and open >= conc then deny('max_concurrent', 1) end
  if rpm >= 0 and rt >= rpm then deny('rpm', reset(1, rt, rpm, r_now)) end
  if tpm >= 0 and tt >= tpm then deny('tpm', reset(2, tt, tpm, t_now)) end
  if daily >= 0 and day_used >= daily then deny('daily_tokens', day_end - now) end
  if monthly >= 0 and month_used >= monthly then deny('monthly_tokens', month_end - now) end
  if daily_usd >= 0 and day_spent >= daily_usd then deny('daily_usd', day_end - now) end
  if monthly_usd >= 0 and month_spent >= monthly_usd then
    deny('monthly_usd', month_end - now)
  end
  if denied ~= '' then
    -- nothing changes from here on: every later admission gets this same reply
    local reply = admit_reply(denied, wait, now, rt, reset(1, rt, rpm, r_now), tt,
                              reset(2, tt, tpm, t_now))
    for j = i, n do replies[j] = reply end
    break
  end
  local tokens, cost = tonumber(ARGV[a + 1]), ARGV[a + 2]
  rt, tt = rt + 1, tt + tokens
  r_now, t_now = r_now + 1, t_now + tokens
  local day_was = day_used
  day_used, month_used = day_used + tokens, month_used + tokens
  quota_dirty = true
  if cost ~= '0' then
    cost = tonumber(cost)
    day_spent, month_spent = day_spent + cost, month_spent + cost
    spend_dirty, unspent = true, unspent + cost
  end
  if day_was == 0 then
    -- ADMIT's first admission of a day, at the same point: the fields written so far are
    -- there for HLEN to count
    write_quota()
    new_day(KEYS[3], now)
  end
  open = open + 1
  leases[#leases + 1] = string.format('%.3f', now_ms + ttl)
  leases[#leases + 1] = ARGV[a + 3]
  -- ADMIT's reset of the requests (admitted under an rpm, rt <= rpm): from the oldest
  -- second after its write, the set's or this one's
  local reset_r = 0
  if rpm >= 0 then
    local oldest = secs_to(1)
    reset_r = ((oldest == nil or tonumber(oldest) >= now_s) and now_s or tonumber(oldest))
              + 60 - now
  end
  replies[i] = admit_reply('', 0, now, rt, reset_r, tt, reset(2, tt, tpm, t_now))
end

if #leases > 0 then
  redis.call('HSET', KEYS[1], second, r_now, 'sum', rt)
  redis.call('HSET', KEYS[2], second, t_now, 'sum', tt)
  if r_was == 0 then
    redis.call('ZADD', KEYS[5], now_s, second)
    for w = 1, 2 do redis.call('EXPIRE', KEYS[w], 61) end
    redis.call('EXPIRE', KEYS[5], 61)
  end
  write_quota()
  redis.call('ZADD', KEYS[4], unpack(leases))
  redis.call('PEXPIRE', KEYS[4], string.format('%d', ttl + 1000))
end
return replies
"""
)
