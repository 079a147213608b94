-- GET URL_PATH; each "{id}" in it is replaced by an id picked at random from IDS_FILE.
-- TOKEN, when set and not empty, is sent as a bearer token.
-- Env: URL_PATH (required), IDS_FILE (required when URL_PATH has "{id}"), TOKEN.
local common = require("common")
local path = os.getenv("URL_PATH")
local ids = path:find("{id}", 1, true) and common.ids() or {}
local token = os.getenv("TOKEN") or ""
if token ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. token
end

function request()
  if #ids == 0 then
    return wrk.format("GET", path)
  end
  return wrk.format("GET", (path:gsub("{id}", function() return ids[math.random(#ids)] end)))
end
