-- PUT /products/{id}: product k of IDS_FILE (line k is the k-th seeded product on both sides) sent
-- whole as seeded (systems.product), with a new random price, so each request changes a row.
-- invmesh's PUT is a full replacement, so the body carries the sku; the peer's (a patch of name,
-- description, price) ignores it. Env: IDS_FILE (required), TOKEN.
local common = require("common")
local ids = common.ids()
common.post_json("PUT")

function request()
  local k = math.random(#ids)
  local body = string.format(
    '{"sku":"SKU-%05d","name":"Product %d","description":"Description of product %d","price":"%d.99"}',
    k, k, k, math.random(0, 999))
  return wrk.format(nil, "/products/" .. ids[k], nil, body)
end
