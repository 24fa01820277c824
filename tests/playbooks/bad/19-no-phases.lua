-- expect: 2: playbook: has no phases
return playbook {
  name = "bad",
}
