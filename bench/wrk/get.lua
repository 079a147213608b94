-- GET URL_PATH; each "{id}" in it is replaced by an id picked at random from IDS_FILE.
-- TOKEN, when set and not empty, is sent as a bearer token.
-- Env: URL_PATH (required), IDS_FILE (required when URL_PATH has "{id}"), TOKEN.
local path = os.getenv("URL_PATH")
local ids = {}
if path:find("{id}", 1, true) then
  for line in io.lines(os.getenv("IDS_FILE")) do
    if line ~= "" then ids[#ids + 1] = line end
  end
end
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
  if #ids == 0 then
    return wrk.format("GET", path)
  end
  return wrk.format("GET", (path:gsub("{id}", function() return ids[math.random(#ids)] end)))
end
