-- wrk script for the capgate benchmark: POST a JSON body with a key.
--
--   BENCH_BODY       the request body (or BENCH_BODY_FILE: a file holding it)
--   BENCH_KEY        sent as x-api-key and as Authorization: Bearer (optional)
--   BENCH_ADDRS      optional "127.0.0.1:4001,127.0.0.1:4002": wrk thread i connects to
--                    address i (round-robin), so `wrk -tN` spreads its connections over
--                    N capgate workers; the URL then only gives the path
--
-- At the end it prints one line `BENCH_RESULT {json}` with the counts and latency
-- percentiles (microseconds) that bench/run reads.
--
--   BENCH_BODY='{"model":"gpt-5-mini","messages":[]}' BENCH_KEY=sk-... \
--     wrk -t1 -c16 -d10s --latency -s bench/post.lua http://127.0.0.1:4000/v1/chat/completions

local body = os.getenv("BENCH_BODY")
local body_file = os.getenv("BENCH_BODY_FILE")
if (body == nil or body == "") and body_file ~= nil and body_file ~= "" then
   local f = assert(io.open(body_file, "rb"))
   body = f:read("*a")
   f:close()
end

wrk.method = "POST"
wrk.body = body or "{}"
wrk.headers["Content-Type"] = "application/json"
local key = os.getenv("BENCH_KEY")
if key ~= nil and key ~= "" then
   wrk.headers["x-api-key"] = key
   wrk.headers["Authorization"] = "Bearer " .. key
end

local addrs = nil
local counter = 0
local spec = os.getenv("BENCH_ADDRS")
if spec ~= nil and spec ~= "" then
   addrs = {}
   for host, port in string.gmatch(spec, "([^,:]+):(%d+)") do
      for _, addr in ipairs(wrk.lookup(host, port)) do
         table.insert(addrs, addr)
         break
      end
   end
end

function setup(thread)
   if addrs ~= nil and #addrs > 0 then
      thread.addr = addrs[(counter % #addrs) + 1]
      counter = counter + 1
   end
end

function done(summary, latency, requests)
   local e = summary.errors
   local p50, p90, p99, mean, max = 0, 0, 0, 0, 0
   if summary.requests > 0 then
      p50, p90, p99 = latency:percentile(50), latency:percentile(90), latency:percentile(99)
      mean, max = latency.mean, latency.max
   end
   io.write(string.format(
      'BENCH_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,' ..
      '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
      '"latency_us":{"mean":%.1f,"max":%d,"p50":%d,"p90":%d,"p99":%d}}\n',
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      mean, max, p50, p90, p99))
end
