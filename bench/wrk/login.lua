-- POST /users/login with the benchmark user's correct password, as
-- ../shared/bench/peer_fastapi/wrk/login.lua does. Env: EMAIL, PASSWORD (defaults: the peer's user).
local email = os.getenv("EMAIL") or "bench@example.com"
local password = os.getenv("PASSWORD") or "bench-password"
wrk.method = "POST"
wrk.path = "/users/login"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"email":"' .. email .. '","password":"' .. password .. '"}'
