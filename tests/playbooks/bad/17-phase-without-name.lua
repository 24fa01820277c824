-- expect: 4: a phase needs a name
return playbook {
  name = "bad",
  phase (nil) { step "a" { run = function() end } },
}
