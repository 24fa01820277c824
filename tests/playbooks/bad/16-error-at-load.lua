-- expect: 3: attempt to index a nil value (global 'undefined_table')
return playbook {
  name = undefined_table.name,
  phase "one" { step "a" { run = function() end } },
}
