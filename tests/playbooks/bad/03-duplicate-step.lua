-- expect: 6: phase 'one': two steps or checks named 'same' (the other at line 5)
return playbook {
  name = "bad",
  phase "one" {
    step "same" { run = function() end },
    step "same" { run = function() end },
  },
}
