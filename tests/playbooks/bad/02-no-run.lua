-- expect: 5: step 'nothing': has no run function
return playbook {
  name = "bad",
  phase "one" {
    step "nothing" { undo = function() end },
  },
}
