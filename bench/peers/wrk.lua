-- wrk script for bench/peers_report.py: GET PREFIX .. key .. SUFFIX.
--   MODE=random  keys drawn uniformly from KEYS (the load)
--   MODE=fill    keys fill:1 .. fill:KEYS once each, then the thread stops (memory per key;
--                PREFIX and SUFFIX then name the peer's long-lived limit)
--   DELAY_MS     a pause before each request on a connection (0: none): with C connections the
--                offered rate is about C x 1000 / DELAY_MS while answers are fast
local prefix = os.getenv("PREFIX") or "/check?key="
local suffix = os.getenv("SUFFIX") or ""
local keys = tonumber(os.getenv("KEYS") or "100000")
local mode = os.getenv("MODE") or "random"
local delay_ms = tonumber(os.getenv("DELAY_MS") or "0")

local counter = 0
function setup(thread)
  counter = counter + 1
  thread:set("seed", counter)
end

local sent = 0
local answered = 0
function init(args)
  math.randomseed(seed * 7919 + os.time())
end

function request()
  if mode == "fill" then
    sent = sent + 1
    return wrk.format("GET", prefix .. "fill:" .. sent .. suffix)
  end
  return wrk.format("GET", prefix .. "user:" .. math.random(1, keys) .. suffix)
end

if delay_ms > 0 then
  function delay()
    return delay_ms
  end
end

if mode == "fill" then
  function response(status, headers, body)
    answered = answered + 1
    if answered >= keys then wrk.thread:stop() end
  end
end
