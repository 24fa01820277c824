-- expect: 7: handler 'restart': field 'retry_delay' must be >= 0
return playbook {
  name = "bad",
  phase "one" {
    handler "restart" {
      run = function() end,
      retry_delay = -1,
    },
    step "a" { notify = { "restart" }, run = function() end },
  },
}
