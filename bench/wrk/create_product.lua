-- POST /products: a new product, its SKU unique to this request (this wrk run's random prefix,
-- the thread and a count), with the fields both sides validate alike (sku 1-64 characters,
-- name, description, price as a string with 2 decimals). Env: TOKEN (both sides need one).
local common = require("common")
common.post_json()
local prefix = "B-" .. common.unique()
local made = 0

function request()
  made = made + 1
  local body = '{"sku":"' .. prefix .. "-" .. (thread_number or 0) .. "-" .. made .. '",'
    .. '"name":"Bench product","description":"Made by the benchmark","price":"9.99"}'
  return wrk.format(nil, "/products", nil, body)
end
