-- A checkout's two steps, in turn on each thread: POST /reservations (1 unit of a product picked at
-- random from IDS_FILE, at DEFAULT, 10 minutes), then POST /reservations/{id}:confirm for a
-- reservation an earlier answer (201) named. invmesh only: the peer keeps no reservations.
-- Env: IDS_FILE, TOKEN.
local common = require("common")
local ids = common.ids()
common.post_json()

local reserved = {}  -- ids of reservations made and not yet confirmed, on this thread

function request()
  local id = table.remove(reserved)
  if id then
    return wrk.format(nil, "/reservations/" .. id .. ":confirm", nil, "{}")
  end
  local body = '{"product_id":"' .. ids[math.random(#ids)] .. '","quantity":1,"ttl_seconds":600,'
    .. '"reference":"bench"}'
  return wrk.format(nil, "/reservations", nil, body)
end

function response(status, headers, body)
  if status == 201 then
    local id = body:match('"id":"([%w-]+)"')
    if id then reserved[#reserved + 1] = id end
  end
end
