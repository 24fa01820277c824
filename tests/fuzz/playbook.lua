-- Fuzz driver: a playbook's file read as a fetched playbook is — in the sandbox with no
-- capability, a deadline and a memory limit — then validated. Whatever the text, the
-- validator returns a playbook or its problems; and a playbook's parameters resolve.
local priv = ...
local dsl = require "hrun.dsl"
local play = require "hrun.play"

return function(data)
  local env = dsl.environment(play.modules(priv, nil), { allowed = priv.allowed, mask = priv.mask,
    armthread = priv.armthread })
  local chunk = load(data, "=fuzz", "t", env)
  if not chunk then
    return
  end
  priv.sandbox({})
  priv.memlimit(64 << 20)
  priv.setdeadline(priv.monotime() + 0.5)
  local ok, res = pcall(chunk)
  local vok, pb, problems
  if ok then
    vok, pb, problems = pcall(dsl.validate, res, priv.nearest, { file = "fuzz", line = 1 }, priv.capability)
    if vok and pb then -- as hrun reads a sandboxed playbook: its parameters as plain data
      vok, pb.params = pcall(dsl.plain, pb.params)
    end
  end
  priv.setdeadline(0)
  priv.memlimit(0)
  priv.sandbox(nil)
  if not vok then
    return -- its own metamethods raised (inside the sandbox): a bad playbook
  end
  if pb then
    local pok, params, perr = pcall(dsl.params, pb, {}, {}, priv.nearest)
    assert(pok and (params or perr), "dsl.params raised: " .. tostring(params))
  else
    assert(type(problems) == "table" and #problems > 0, "dsl.validate: no playbook and no problems")
  end
end
