-- wrk script for bench/peers_report.py and cluster/seed_report.py: GET PREFIX .. key .. SUFFIX.
--   MODE=random  keys drawn uniformly from KEYS (the load)
--   MODE=fill    keys fill:1 .. fill:KEYS once each, then the thread stops (memory per key;
--                PREFIX and SUFFIX then name the peer's long-lived limit)
-- Latency at a fixed rate is measured with build/bin/http-paced, not wrk (bench/http_paced.cc).
local prefix = os.getenv("PREFIX") or "/check?key="
local suffix = os.getenv("SUFFIX") or ""
local keys = tonumber(os.getenv("KEYS") or "100000")
local mode = os.getenv("MODE") or "random"

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

if mode == "fill" then
  function response(status, headers, body)
    answered = answered + 1
    if answered >= keys then wrk.thread:stop() end
  end
end
