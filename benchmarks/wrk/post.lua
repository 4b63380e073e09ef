-- wrk script: POST random realistic payloads (see benchmarks/payloads.py).
--
-- Usage: wrk ... -s post.lua URL -- BATCH RATE CONNECTION
--   BATCH      - 0: one JSON payload per request; n: a JSON array of n payloads
--   RATE       - requests/s for this thread (0: as fast as possible); paced
--                with delay() and a microsecond clock from LuaJIT's ffi
--   CONNECTION - "close": send Connection: close (a new TCP connection per
--                request, as devices posting every 30 s do); else keep-alive
-- done() prints one line: WRK_JSON {"requests": ..., "p50_us": ..., "non2xx": ...}
--
-- Each thread owns TOKENS sessions, each bound to one of 10 customers x 100
-- contents; a session's sessionDuration grows by 30 s per payload, so no
-- payload is a retry.

local TOKENS = 50000
local PERIOD = 30000

local threads = {}
local counter = 0

function setup(thread)
  counter = counter + 1
  thread:set("id", counter)
  table.insert(threads, thread)
end

local headers = { ["Content-Type"] = "application/json" }
local batch, rate = 0, 0
local sessions = {}
local run = ""
local non2xx = 0
local now_us = nil
local next_slot = 0
local interval_us = 0

local function clock()
  local ok, ffi = pcall(require, "ffi")
  if not ok then
    return nil
  end
  ffi.cdef[[
    typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
    int clock_gettime(int clk_id, bench_timespec *tp);
  ]]
  local ts = ffi.new("bench_timespec")
  return function()
    ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
    return tonumber(ts.tv_sec) * 1000000 + tonumber(ts.tv_nsec) / 1000
  end
end

-- Defined by init() only when pacing (wrk checks for delay() after init, and
-- without it sends each request at once): each request takes the next free
-- slot of this thread's schedule; a slot already past is not caught up.
local function paced_delay()
  local now = now_us()
  local slot = next_slot
  if slot < now then
    slot = now
  end
  next_slot = slot + interval_us
  return math.floor((slot - now) / 1000)
end

function init(args)
  batch = tonumber(args[1] or "0") or 0
  rate = tonumber(args[2] or "0") or 0
  if args[3] == "close" then
    headers["Connection"] = "close"
  end
  math.randomseed(os.time() * 1000 + (id or 0) * 7919)
  run = string.format("%08x%04x", math.random(0, 0x7fffffff), id or 0)
  if rate > 0 then
    now_us = clock()
    interval_us = 1000000 / rate
    if now_us then
      next_slot = now_us()
      delay = paced_delay
    end
  end
end

local function session(i)
  local s = sessions[i]
  if not s then
    s = {
      token = string.format("%s-%08x-%08x", run, i, math.random(0, 0x7fffffff)),
      customer = string.format("customer-%02d", math.random(0, 9)),
      content = string.format("live/channel-%03d", math.random(0, 99)),
      duration = PERIOD * math.random(0, 19),
    }
    sessions[i] = s
  end
  return s
end

local function payload()
  local s = session(math.random(1, TOKENS))
  local duration = s.duration
  s.duration = duration + PERIOD
  local cdn, p2p = 0, 0
  if math.random() >= 0.05 then -- 5%: a stalled player, no bytes at all
    cdn, p2p = math.random(0, 3999999), math.random(0, 7999999)
  end
  return string.format(
    '{"token":"%s","customer":"%s","content":"%s","timespan":%d,"p2p":%d,"cdn":%d,'
      .. '"sessionDuration":%d}',
    s.token, s.customer, s.content, PERIOD + math.random(-500, 499), p2p, cdn, duration)
end

function request()
  local body
  if batch > 0 then
    local items = {}
    for n = 1, batch do
      items[n] = payload()
    end
    body = "[" .. table.concat(items, ",") .. "]"
  else
    body = payload()
  end
  return wrk.format("POST", nil, headers, body)
end

function response(status, headers, body)
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
  end
end

function done(summary, latency, requests)
  local total = 0
  for _, thread in ipairs(threads) do
    total = total + (thread:get("non2xx") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"p50_us":%d,"p99_us":%d,'
      .. '"max_us":%d,"non2xx":%d,"errors":{"connect":%d,"read":%d,"write":%d,'
      .. '"status":%d,"timeout":%d}}\n',
    summary.requests, summary.duration, summary.bytes, latency:percentile(50),
    latency:percentile(99), latency.max, total, e.connect, e.read, e.write, e.status,
    e.timeout))
end
