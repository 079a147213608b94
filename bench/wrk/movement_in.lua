-- POST /inventory: an IN movement of quantity 1 for a product picked at random from IDS_FILE,
-- with no request_id: the body of ../shared/bench/peer_fastapi/wrk/movement_in.lua. An id of
-- digits only (the peer's) is sent as a JSON number, any other (invmesh's) as a string.
-- Env: IDS_FILE (required), TOKEN (a bearer token; both sides need one to write).
local ids = {}
for line in io.lines(os.getenv("IDS_FILE")) do
  if line ~= "" then
    ids[#ids + 1] = line:match("^%d+$") and line or ('"' .. line .. '"')
  end
end
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("TOKEN") or "")

local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("thread_number", threads)
end

function init(args)
  math.randomseed(os.time() + 7919 * (thread_number or 0))
end

function request()
  local body = '{"product_id":' .. ids[math.random(#ids)] .. ',"type":"IN","quantity":1,"reason":"bench"}'
  return wrk.format(nil, "/inventory", nil, body)
end
