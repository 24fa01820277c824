-- metamethods that run while hrun reads the playbook: inside the sandbox, no capability
local params = setmetatable({ dir = "/tmp" }, { __pairs = function(t) fs.write("/tmp/x", "x") return next, t end })
return playbook {
  name = "hostile", params = params, capabilities = { "fs:/tmp", "netw", "exec:", "net:x" },
  phase "p" {
    step "s" { run = function() end, timeout = -1, retries = 1.5 },
    check "c" (function() return true end),
  },
}
