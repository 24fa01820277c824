-- expect: the file does not return a playbook
local pb = playbook {
  name = "forgot to return it",
  phase "one" { step "a" { run = function() end } },
}
