-- wrk script for `gigarouter bench flood` (src/gigarouter/bench/flood.py drives it).
--
-- POSTs the JSON bodies listed one per line in $FLOOD_BODIES, round robin, to $FLOOD_PATH, and
-- records what wrk itself does not: the count of each status, how many 429/503 answers came
-- without Retry-After, and the latency of each successful request apart from the refusals
-- (wrk's own histogram mixes both). A request's send time travels in its X-Request-Id, which the
-- server echoes, so a response is matched to its request whatever connection it came back on.
-- At the end the totals go to $FLOOD_OUT as JSON.
--
-- With FLOOD_RETRY_AFTER=honour a refused client waits as the server asked before it sends
-- again, as openai-python and other well-behaved clients do: Retry-After seconds, times a
-- uniform 0.5-1.5 jitter (many clients are not in step). wrk keeps one Lua state per thread,
-- not per connection, so the waits go through a queue: each refusal pushes its wait, and each
-- next request of that thread takes the oldest one (the same waits, on average the same
-- clients). With FLOOD_RETRY_AFTER=ignore (the default) every client sends again at once.

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } flood_timespec;
int clock_gettime(int clk_id, flood_timespec *tp);
]]
local CLOCK_MONOTONIC = 1
local now_ts = ffi.new("flood_timespec")

local function now_us()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, now_ts)
  return tonumber(now_ts.tv_sec) * 1000000 + math.floor(tonumber(now_ts.tv_nsec) / 1000)
end

local threads = {}

function setup(thread)
  thread:set("thread_id", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  bodies = {}
  for line in io.lines(os.getenv("FLOOD_BODIES")) do
    bodies[#bodies + 1] = line
  end
  path = os.getenv("FLOOD_PATH") or "/v1/embeddings"
  next_body = (thread_id * 7919) % #bodies     -- threads start at different places in the list
  sequence = 0
  statuses = {}        -- status -> count
  no_retry_after = 0   -- 429 and 503 answers without Retry-After
  ok_ms = {}           -- latency of each 200, milliseconds
  honour = os.getenv("FLOOD_RETRY_AFTER") == "honour"
  waits, wait_head, wait_tail = {}, 1, 0     -- FIFO of pending waits, milliseconds
  math.randomseed(thread_id * 104729)
end

function delay()
  if wait_head > wait_tail then
    return 0
  end
  local ms = waits[wait_head]
  waits[wait_head] = nil
  wait_head = wait_head + 1
  return ms
end

function request()
  next_body = next_body % #bodies + 1
  sequence = sequence + 1
  local headers = {
    ["Content-Type"] = "application/json",
    ["X-Request-Id"] = "flood-" .. thread_id .. "-" .. sequence .. "-" .. now_us(),
  }
  return wrk.format("POST", path, headers, bodies[next_body])
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if status == 429 or status == 503 then
    local retry_after = headers["retry-after"] or headers["Retry-After"]
    if retry_after == nil then
      no_retry_after = no_retry_after + 1
    elseif honour then
      wait_tail = wait_tail + 1
      waits[wait_tail] = math.floor((tonumber(retry_after) or 1) * 1000 * (0.5 + math.random()))
    end
  elseif status == 200 then
    local id = headers["x-request-id"] or headers["X-Request-Id"]
    local sent = id and tonumber(string.match(id, "-(%d+)$"))
    if sent then
      ok_ms[#ok_ms + 1] = (now_us() - sent) / 1000
    end
  end
end

function done(summary, latency, requests)
  local counts, missing, oks = {}, 0, {}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses")) do
      counts[status] = (counts[status] or 0) + n
    end
    missing = missing + thread:get("no_retry_after")
    for _, ms in ipairs(thread:get("ok_ms")) do
      oks[#oks + 1] = string.format("%.3f", ms)
    end
  end
  local parts = {}
  for status, n in pairs(counts) do
    parts[#parts + 1] = string.format('"%d": %d', status, n)
  end
  local e = summary.errors
  local out = assert(io.open(os.getenv("FLOOD_OUT"), "w"))
  out:write(string.format(
    '{"duration_s": %.3f, "requests": %d, "bytes": %d, "statuses": {%s}, "refusals_without_retry_after": %d, ' ..
    '"socket_errors": {"connect": %d, "read": %d, "write": %d, "timeout": %d}, "ok_latency_ms": [%s]}\n',
    summary.duration / 1e6, summary.requests, summary.bytes, table.concat(parts, ", "), missing,
    e.connect, e.read, e.write, e.timeout, table.concat(oks, ", ")))
  out:close()
end
