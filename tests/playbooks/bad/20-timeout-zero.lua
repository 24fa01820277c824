-- expect: 5: step 't': field 'timeout' must be more than 0 seconds
return playbook {
  name = "bad",
  phase "one" {
    step "t" { run = function() end, timeout = 0 },
  },
}
