-- 20 steps, each running /bin/true: the orchestration overhead of hrun, journaling on
-- (every step's start and end and every command's intent and result are committed to
-- the journal with synchronous=FULL). See bench/orchestration.sh. changed = false (as
-- changed_when: false in bench/steps20.yml): the command still runs and is journaled,
-- but a step counts ok, so that a run says changed=0.
return playbook {
  name = "bench-20-steps",
  capabilities = { "exec:/bin/true" }, -- what --sandbox allows it (bench/orchestration.sh runs both)
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
