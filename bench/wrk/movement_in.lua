-- POST /inventory: an IN movement of quantity 1 for a product picked at random from IDS_FILE,
-- with no request_id: the body of ../shared/bench/peer_fastapi/wrk/movement_in.lua. An id of
-- digits only (the peer's) is sent as a JSON number, any other (invmesh's) as a string.
-- Env: IDS_FILE (required), TOKEN (a bearer token; both sides need one to write).
local common = require("common")
local ids = common.ids(function(id) return id:match("^%d+$") and id or ('"' .. id .. '"') end)
common.post_json()

function request()
  local body = '{"product_id":' .. ids[math.random(#ids)] .. ',"type":"IN","quantity":1,"reason":"bench"}'
  return wrk.format(nil, "/inventory", nil, body)
end
