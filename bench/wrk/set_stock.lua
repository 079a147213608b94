-- PUT /inventory/{id}: a count, {"quantity": 1,000,001 to 1,000,999} (a value that changes the
-- stock, so each side writes), for a product picked at random from IDS_FILE. The peer's StockSet
-- is {"quantity"}; invmesh's count takes "reason" and "request_id" too, sent by neither.
-- Env: IDS_FILE (required), TOKEN (a bearer token; both sides need one to write).
local common = require("common")
local ids = common.ids()
common.post_json("PUT")

function request()
  local body = '{"quantity":' .. (1000000 + math.random(999)) .. '}'
  return wrk.format(nil, "/inventory/" .. ids[math.random(#ids)], nil, body)
end
