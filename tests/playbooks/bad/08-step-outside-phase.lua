-- expect: 2: playbook: item 2 is not a phase (got a step)
return playbook {
  name = "bad",
  phase "one" { step "a" { run = function() end } },
  step "stray" { run = function() end },
}
