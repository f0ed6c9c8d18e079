-- wrk script for scripts/bench/wrk.sh: POSTs pre-minted webhooks, one
-- distinct job each, from a file of "<path> <body>" lines written by
-- `loadgen wrkdata`. Arguments: file, first line, span. Thread k sends
-- lines first+k*span, first+k*span+1, ... in order (its own region, so a
-- feeder can keep each thread's next jobs recorded however far the threads
-- drift apart); past the end it wraps around (those are repeats, answered
-- 200 duplicate).
local threads_made = 0
function setup(thread)
  thread:set("id", threads_made)
  threads_made = threads_made + 1
end

local lines = {}
local idx

function init(args)
  local f = assert(io.open(args[1], "r"))
  for line in f:lines() do
    local sp = line:find(" ", 1, true)
    lines[#lines + 1] = { line:sub(1, sp - 1), line:sub(sp + 1) }
  end
  f:close()
  idx = tonumber(args[2] or "0") + id * tonumber(args[3] or "0")
end

local headers = { ["Content-Type"] = "application/json" }

function request()
  local l = lines[idx % #lines + 1]
  idx = idx + 1
  return wrk.format("POST", l[1], headers, l[2])
end
