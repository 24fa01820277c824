-- expect: 5: step 'a': has 1 unnamed value(s); fields are name = value
return playbook {
  name = "bad",
  phase "one" {
    step "a" { function() end, run = function() end },
  },
}
