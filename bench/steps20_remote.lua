-- bench/steps20.lua on another host (bench/remote.sh): 20 steps `on = "h"`, each running
-- /bin/true there through the host's agent; every command's intent and result journaled
-- on the host (agent.db) before and after it runs, and here with its host. changed =
-- false, as changed_when: false in bench/steps20_remote.yml.
return playbook {
  name = "bench-20-steps-remote",
  hosts = { h = "host1" }, -- an alias of the fixture's ssh_config (HRUN_SSH_CONFIG)
  phase "bench" {
    step "true 01" { on = "h", run = function() exec.run({ "/bin/true" }, { changed = false }) end },
    step "true 02" { on = "h", run = function() exec.run({ "/bin/true" }, { changed = false }) end },
    step "true 03" { on = "h", run = function() exec.run({ "/bin/true" }, { changed = false }) end },
    step "true 04" { on = "h", run = function() exec.run({ "/bin/true" }, { changed = false }) end },
    step "true 05" { on = "h", run = function() exec.run({ "/bin/true" }, { changed = false }) end },
    step "true 06" { on = "h", run = function() exec.run({ "/bin/true" }, { changed = false }) end },
    step "true 07" { on = "h", run = function() exec.run({ "/bin/true" }, { changed = false }) end },
    step "true 08" { on = "h", run = function() exec.run({ "/bin/true" }, { changed = false }) end },
    step "true 09" { on = "h", run = function() exec.run({ "/bin/true" }, { changed = false }) end },
    step "true 10" { on = "h", run = function() exec.run({ "/bin/true" }, { changed = false }) end },
    step "true 11" { on = "h", run = function() exec.run({ "/bin/true" }, { changed = false }) end },
    step "true 12" { on = "h", run = function() exec.run({ "/bin/true" }, { changed = false }) end },
    step "true 13" { on = "h", run = function() exec.run({ "/bin/true" }, { changed = false }) end },
    step "true 14" { on = "h", run = function() exec.run({ "/bin/true" }, { changed = false }) end },
    step "true 15" { on = "h", run = function() exec.run({ "/bin/true" }, { changed = false }) end },
    step "true 16" { on = "h", run = function() exec.run({ "/bin/true" }, { changed = false }) end },
    step "true 17" { on = "h", run = function() exec.run({ "/bin/true" }, { changed = false }) end },
    step "true 18" { on = "h", run = function() exec.run({ "/bin/true" }, { changed = false }) end },
    step "true 19" { on = "h", run = function() exec.run({ "/bin/true" }, { changed = false }) end },
    step "true 20" { on = "h", run = function() exec.run({ "/bin/true" }, { changed = false }) end },
  },
}
