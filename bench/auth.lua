-- wrk script: the rig's post.lua plus an Authorization header from $AUTHORIZATION.
dofile(os.getenv("RIG") .. "/post.lua")
local authorization = os.getenv("AUTHORIZATION")
if authorization and authorization ~= "" then
  wrk.headers["Authorization"] = authorization
end
