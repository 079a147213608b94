-- A mix, chosen per request: GET /products/{id}, GET /inventory/{id} and POST /inventory (an IN of
-- 1, as movement_in.lua), in the shares MIX gives ("80,10,10"), all on the first HOT products of
-- IDS_FILE: reads and writes meet on the same few rows, so the caches are read against writes.
-- Every request carries TOKEN (the peer reads without one, and ignores it). Each 201 is an IN
-- that was applied: done() prints their count, which the stock check needs.
-- Env: IDS_FILE, TOKEN, MIX (required), HOT (default 20).
local common = require("common")
local hot = tonumber(os.getenv("HOT") or "20")
local quoted = function(id) return id:match("^%d+$") and id or ('"' .. id .. '"') end
local ids = {}
for i, id in ipairs(common.ids()) do
  if i <= hot then ids[i] = id end
end
local shares = {}
for share in (os.getenv("MIX") or ""):gmatch("%d+") do shares[#shares + 1] = tonumber(share) end
local headers = {["Authorization"] = "Bearer " .. (os.getenv("TOKEN") or ""),
                 ["Content-Type"] = "application/json"}
created = 0

function request()
  local id, pick = ids[math.random(#ids)], math.random(100)
  if pick <= shares[1] then
    return wrk.format("GET", "/products/" .. id, headers)
  elseif pick <= shares[1] + shares[2] then
    return wrk.format("GET", "/inventory/" .. id, headers)
  end
  local body = '{"product_id":' .. quoted(id) .. ',"type":"IN","quantity":1,"reason":"bench"}'
  return wrk.format("POST", "/inventory", headers, body)
end

function response(status)
  if status == 201 then created = created + 1 end
end

function done(summary, latency, requests)
  local total = 0
  for _, thread in ipairs(common.threads) do total = total + thread:get("created") end
  io.write(string.format("Created (201): %d\n", total))
end
