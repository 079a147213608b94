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

-- JSON bodies (POST unless `method` says otherwise) with TOKEN as a bearer token.
function common.post_json(method)
  wrk.method = method or "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer " .. (os.getenv("TOKEN") or "")
end

-- A string no other wrk run makes (12 hex digits from /dev/urandom): unique values across runs.
function common.unique()
  local random = io.open("/dev/urandom", "rb")
  local bytes = random:read(6)
  random:close()
  return (bytes:gsub(".", function(c) return string.format("%02x", c:byte()) end))
end

-- Each wrk thread has its own Lua state: give each its own random sequence. `common.threads`
-- (in the main state) lets a script's done() read what each thread counted.
common.threads = {}
function setup(thread)
  common.threads[#common.threads + 1] = thread
  thread:set("thread_number", #common.threads)
end

function init(args)
  math.randomseed(os.time() + 7919 * (thread_number or 0))
end

return common
