-- Replays pre-signed Chatwoot deliveries, one file per wrk thread, so every request carries a
-- distinct message id and a valid HMAC (wrk's LuaJIT has no crypto; bench/ingest.py signs them).
-- Usage: wrk -s bench/wrk_signed.lua URL -- DIRECTORY
local next_id = 0
function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
end

function init(args)
  requests = {}
  for line in io.lines(args[1] .. "/requests_" .. id .. ".tsv") do
    local stamp, signature, body = line:match("^([^\t]*)\t([^\t]*)\t(.*)$")
    requests[#requests + 1] = wrk.format("POST", nil, {
      ["Content-Type"] = "application/json",
      ["X-Chatwoot-Timestamp"] = stamp,
      ["X-Chatwoot-Signature"] = signature,
    }, body)
  end
  position = 0
end

function request()
  position = position + 1
  if position > #requests then
    position = 1
  end
  return requests[position]
end
