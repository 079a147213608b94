-- GET PATH_PREFIX..id, the id picked at random from IDS_FILE (one id a line).
-- TOKEN, when set and not empty, is sent as a bearer token.
-- Env: IDS_FILE (required), PATH_PREFIX (default /products/), TOKEN.
local ids = {}
for line in io.lines(os.getenv("IDS_FILE")) do
  if line ~= "" then ids[#ids + 1] = line end
end
local prefix = os.getenv("PATH_PREFIX") or "/products/"
local token = os.getenv("TOKEN") or ""
if token ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. token
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

function request()
  return wrk.format("GET", prefix .. ids[math.random(#ids)])
end
