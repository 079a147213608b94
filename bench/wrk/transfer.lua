-- POST /inventory/transfers: 1 unit of a product picked at random from IDS_FILE, from the DEFAULT
-- location to LOCATION (invmesh only: the peer keeps no locations). No request_id.
-- Env: IDS_FILE, TOKEN, LOCATION (the second location's id; the benchmark creates it).
local common = require("common")
local ids = common.ids()
local default = "00000000-0000-0000-0000-000000000001"
local target = os.getenv("LOCATION")
common.post_json()

function request()
  local body = '{"product_id":"' .. ids[math.random(#ids)] .. '","from_location_id":"' .. default
    .. '","to_location_id":"' .. target .. '","quantity":1,"reason":"bench"}'
  return wrk.format(nil, "/inventory/transfers", nil, body)
end
