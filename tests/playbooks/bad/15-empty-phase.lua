-- expect: 4: phase 'empty': has no steps or checks
return playbook {
  name = "bad",
  phase "empty" {},
}
