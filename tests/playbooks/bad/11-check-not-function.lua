-- expect: 5: check 'disk': expects a function
return playbook {
  name = "bad",
  phase "one" {
    check "disk" { fn = function() end },
    step "a" { run = function() end },
  },
}
