-- expect: 5: step 'slow': field 'timeout' must be a number, got string
return playbook {
  name = "bad",
  phase "one" {
    step "slow" { run = function() end, timeout = "10s" },
  },
}
