-- expect: 5: step 'r': field 'resume' must be "undo" or "rerun", got "again"
return playbook {
  name = "bad",
  phase "one" {
    step "r" { run = function() end, resume = "again" },
  },
}
