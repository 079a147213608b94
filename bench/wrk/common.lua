-- What the scripts share (`local common = require("common")`; bench.harness puts this folder on
-- LUA_PATH): the ids in IDS_FILE, the bearer token, and a random sequence of each wrk thread's own.
local common = {}

-- The non-empty lines of IDS_FILE, each passed through `format` when given.
function common.ids(format)
  local ids = {}
  for line in io.lines(os.getenv("IDS_FILE")) do
    if line ~= "" then ids[#ids + 1] = format and format(line) or line end
  end
  return ids
end

-- JSON POSTs with TOKEN as a bearer token.
function common.post_json()
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer " .. (os.getenv("TOKEN") or "")
end

-- Each wrk thread has its own Lua state: give each its own random sequence.
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("thread_number", threads)
end

function init(args)
  math.randomseed(os.time() + 7919 * (thread_number or 0))
end

return common
