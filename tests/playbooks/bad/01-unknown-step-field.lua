-- expect: 5: step 'copy': unknown field 'rnu' (did you mean 'run'?)
return playbook {
  name = "bad",
  phase "one" {
    step "copy" { rnu = function() end },
  },
}
