-- expect: 4: playbook: unknown field 'on_failre' (did you mean 'on_failure'?)
return playbook {
  name = "bad",
  on_failre = "stop",
  phase "one" { step "a" { run = function() end } },
}
