-- bench/steps20_remote.lua on a fleet (bench/fleet.sh): the same 20 steps on every host of
-- the inventory's group "servers" (`hrun bench/steps20_fleet.lua --hosts INVENTORY`), each
-- /bin/true there with its intent and result journaled on the host and in the host's
-- member journal here; changed = false, as changed_when: false in bench/steps20_remote.yml.
-- The default strategy (linear): no host starts a step before every host ended the one before.
return playbook {
  name = "bench-20-steps-fleet",
  targets = "servers",
  phase "bench" {
    step "true 01" { run = function() exec.run({ "/bin/true" }, { changed = false }) end },
    step "true 02" { run = function() exec.run({ "/bin/true" }, { changed = false }) end },
    step "true 03" { run = function() exec.run({ "/bin/true" }, { changed = false }) end },
    step "true 04" { run = function() exec.run({ "/bin/true" }, { changed = false }) end },
    step "true 05" { run = function() exec.run({ "/bin/true" }, { changed = false }) end },
    step "true 06" { run = function() exec.run({ "/bin/true" }, { changed = false }) end },
    step "true 07" { run = function() exec.run({ "/bin/true" }, { changed = false }) end },
    step "true 08" { run = function() exec.run({ "/bin/true" }, { changed = false }) end },
    step "true 09" { run = function() exec.run({ "/bin/true" }, { changed = false }) end },
    step "true 10" { run = function() exec.run({ "/bin/true" }, { changed = false }) end },
    step "true 11" { run = function() exec.run({ "/bin/true" }, { changed = false }) end },
    step "true 12" { run = function() exec.run({ "/bin/true" }, { changed = false }) end },
    step "true 13" { run = function() exec.run({ "/bin/true" }, { changed = false }) end },
    step "true 14" { run = function() exec.run({ "/bin/true" }, { changed = false }) end },
    step "true 15" { run = function() exec.run({ "/bin/true" }, { changed = false }) end },
    step "true 16" { run = function() exec.run({ "/bin/true" }, { changed = false }) end },
    step "true 17" { run = function() exec.run({ "/bin/true" }, { changed = false }) end },
    step "true 18" { run = function() exec.run({ "/bin/true" }, { changed = false }) end },
    step "true 19" { run = function() exec.run({ "/bin/true" }, { changed = false }) end },
    step "true 20" { run = function() exec.run({ "/bin/true" }, { changed = false }) end },
  },
}
