return playbook { name = "small", version = "1", params = { n = 1, list = { "a" } },
  phase "p" { step "s" { run = function(ctx) ctx.log("%d", ctx.params.n) end } } }
