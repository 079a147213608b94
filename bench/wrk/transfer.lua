-- POST /inventory/transfers: 1 unit of a product picked at random from IDS_FILE, from the DEFAULT
-- location to LOCATION (invmesh only: the peer keeps no locations). No request_id.
-- Env: IDS_FILE, TOKEN, LOCATION (the second location's id; the benchmark creates it).
local ids = {}
for line in io.lines(os.getenv("IDS_FILE")) do
  if line ~= "" then ids[#ids + 1] = line end
end
local default = "00000000-0000-0000-0000-000000000001"
local target = os.getenv("LOCATION")
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
  local body = '{"product_id":"' .. ids[math.random(#ids)] .. '","from_location_id":"' .. default
    .. '","to_location_id":"' .. target .. '","quantity":1,"reason":"bench"}'
  return wrk.format(nil, "/inventory/transfers", nil, body)
end
