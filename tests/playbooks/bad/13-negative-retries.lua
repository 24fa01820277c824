-- expect: 5: step 'flaky': field 'retries' must be a whole number >= 0
return playbook {
  name = "bad",
  phase "one" {
    step "flaky" { run = function() end, retries = 1.5 },
  },
}
