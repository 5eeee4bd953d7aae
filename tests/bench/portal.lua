-- wrk script for tests/bench/portal.py: signed-in visitors fetching their conversation pages.
--
--   wrk ... URL -s tests/bench/portal.lua -- TARGETS RESULT COOKIE_NAME [THINK_MS]
--
-- TARGETS holds one "<session cookie value> <conversation id>" per line. Each thread goes
-- round the list from its own starting point, one pre-built request per target. Without
-- THINK_MS each connection asks again as soon as it has an answer (the most the portal can
-- serve); with it every connection is a visitor who reads for a while before the next page,
-- a random pause exponentially distributed with that mean (milliseconds), so requests arrive
-- in bursts and lulls as they do from people. Every response is checked: status 200 and a
-- body holding the thread of messages (a page that asks to sign in, a 404 or an error page
-- counts against the run). done() writes the totals and the latency distribution
-- (microseconds) to RESULT, so the runs of several wrk instances can be merged.

local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("thread_number", #threads)
end

function init(args)
  local cookie_name = args[3]
  result_path = args[2]
  local think_ms = tonumber(args[4] or "0") or 0
  if think_ms > 0 then
    -- Defined only when wanted: wrk schedules every request through a timer once delay()
    -- exists (it looks for it after init()).
    math.randomseed(thread_number * 7919)
    function delay()
      return math.floor(-math.log(1 - math.random()) * think_ms + 0.5)
    end
  end
  prepared = {}
  for line in io.lines(args[1]) do
    local cookie, id = line:match("^(%S+)%s+(%d+)$")
    if cookie then
      prepared[#prepared + 1] = wrk.format(
        "GET", "/conversations/" .. id, { Cookie = cookie_name .. "=" .. cookie }
      )
    end
  end
  if #prepared == 0 then
    error("no targets in " .. args[1])
  end
  -- Threads start far apart in the list, so they do not ask for the same pages in step.
  position = math.floor((thread_number - 1) * #prepared / 7) % #prepared
  ok, non200, bad_body = 0, 0, 0
  statuses = ""
end

function request()
  position = position % #prepared + 1
  return prepared[position]
end

function response(status, headers, body)
  if status ~= 200 then
    non200 = non200 + 1
    if #statuses < 200 then
      statuses = statuses .. " " .. status
    end
  elseif body and body:find('<ol class="thread">', 1, true) then
    ok = ok + 1
  else
    bad_body = bad_body + 1
  end
end

function done(summary, latency, requests)
  local ok_all, non200_all, bad_all, statuses_all = 0, 0, 0, ""
  local path = nil
  for _, thread in ipairs(threads) do
    ok_all = ok_all + thread:get("ok")
    non200_all = non200_all + thread:get("non200")
    bad_all = bad_all + thread:get("bad_body")
    statuses_all = statuses_all .. thread:get("statuses")
    path = path or thread:get("result_path")
  end
  local out = assert(io.open(path, "w"))
  out:write(string.format("requests %d\n", summary.requests))
  out:write(string.format("duration_us %d\n", summary.duration))
  out:write(string.format("bytes %d\n", summary.bytes))
  for _, name in ipairs({ "connect", "read", "write", "status", "timeout" }) do
    out:write(string.format("error_%s %d\n", name, summary.errors[name]))
  end
  out:write(string.format("ok %d\nnon200 %d\nbad_body %d\n", ok_all, non200_all, bad_all))
  out:write("statuses" .. statuses_all .. "\n")
  -- The distribution as quantiles, 0.1 % apart and 0.01 % apart in the last 0.1 %: enough
  -- to merge the runs of several wrk instances (latency(i), the raw histogram, walks the
  -- whole histogram on every call: far too slow for tens of thousands of distinct values).
  for step = 1, 999 do
    out:write(string.format("quantile %.2f %d\n", step / 10, latency:percentile(step / 10)))
  end
  for step = 1, 9 do
    local p = 99.9 + step / 100
    out:write(string.format("quantile %.2f %d\n", p, latency:percentile(p)))
  end
  out:write(string.format("quantile 100 %d\n", latency.max))
  out:write(string.format("latency_min %d\nlatency_mean %.1f\n", latency.min, latency.mean))
  out:close()
end
