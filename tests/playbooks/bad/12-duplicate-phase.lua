-- expect: 5: playbook: two phases named 'one' (the other at line 4)
return playbook {
  name = "bad",
  phase "one" { step "a" { run = function() end } },
  phase "one" { step "b" { run = function() end } },
}
