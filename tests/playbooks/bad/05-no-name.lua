-- expect: 2: playbook: needs a name
return playbook {
  phase "one" {
    step "a" { run = function() end },
  },
}
