-- wrk script: GET /v1/check with keys drawn uniformly from a million users.
--   wrk -t2 -c64 -d10s -s bench/wrk/random_keys.lua http://127.0.0.1:8080
-- KEYS, LIMIT and PERIOD can be overridden through the environment.
local keys = tonumber(os.getenv("KEYS") or "1000000")
local limit = os.getenv("LIMIT") or "100"
local period = os.getenv("PERIOD") or "1m"

local counter = 0
function setup(thread)
  counter = counter + 1
  thread:set("seed", counter)
end

function init(args)
  math.randomseed(seed * 7919 + os.time())
end

function request()
  local k = math.random(1, keys)
  return wrk.format("GET", "/v1/check?key=user:" .. k .. "&limit=" .. limit .. "&period=" .. period)
end
