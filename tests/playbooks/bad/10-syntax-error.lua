-- expect: 6: '}' expected (to close '{' at line 4) near 'step'
return playbook {
  name = "bad",
  phase "one" {
    step "a" { run = function() end }
    step "b" { run = function() end },
  },
}
