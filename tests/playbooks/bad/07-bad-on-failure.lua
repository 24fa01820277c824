-- expect: 4: playbook: field 'on_failure' must be "rollback" or "stop", got "retry"
return playbook {
  name = "bad",
  on_failure = "retry",
  phase "one" { step "a" { run = function() end } },
}
