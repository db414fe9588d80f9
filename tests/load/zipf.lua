-- wrk script: GET /api/v1/store/{username} over N creators whose popularity follows a Zipf law
-- (exponent S): creator k is read in proportion to 1/k^S. Prints a JSON summary at the end.
local N = tonumber(os.getenv("CREATORS") or "1000")
local S = tonumber(os.getenv("ZIPF_S") or "1.0")
local PREFIX = os.getenv("PREFIX") or "shop_"

local cdf = {}
local total = 0
for k = 1, N do
  total = total + 1 / (k ^ S)
  cdf[k] = total
end
for k = 1, N do cdf[k] = cdf[k] / total end

local function pick()
  local u = math.random()
  local lo, hi = 1, N
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if cdf[mid] < u then lo = mid + 1 else hi = mid end
  end
  return lo
end

function setup(thread)
  thread:set("id", tostring(thread))
end

function init(args)
  math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16) % 100000)
end

function request()
  return wrk.format("GET", "/api/v1/store/" .. PREFIX .. pick())
end

function done(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.status + summary.errors.timeout
  io.write(string.format(
    '{"requests": %d, "duration_s": %.3f, "rps": %.1f, "errors": %d, "errors_connect": %d, "errors_read": %d, "errors_write": %d, "errors_status": %d, "errors_timeout": %d, "p50_ms": %.3f, "p95_ms": %.3f, "p99_ms": %.3f, "max_ms": %.3f}\n',
    summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6), errors,
    summary.errors.connect, summary.errors.read, summary.errors.write, summary.errors.status, summary.errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(95) / 1000, latency:percentile(99) / 1000, latency.max / 1000))
end
