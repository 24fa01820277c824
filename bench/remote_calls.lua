-- Per-call cost of a primitive on another host, on a warm channel (bench/remote.sh):
-- params.reads fs.stat calls (a read: no journal) and params.writes fs.write calls of a
-- small file (each journaled on both sides: the host's agent.db before it acts, this
-- controller's journal with its host), each loop timed inside its step. -H h=local
-- runs the same loops on this machine, for the local cost of the same calls. In a step
-- `on` a host every module call goes there, sys.clock() too: its two calls are within
-- the loop's timing (2 of reads + 2 calls).
return playbook {
  name = "bench-remote-calls",
  hosts = { h = "host1" }, -- an alias of the fixture's ssh_config (HRUN_SSH_CONFIG)
  params = { reads = 2000, writes = 500, dir = "/tmp/hrun-bench-remote" },
  phase "calls" {
    step "warm" { on = "h", run = function(ctx)
      -- the channel is up and the agent answered before the first timed call
      fs.mkdir(ctx.params.dir, { parents = true })
    end },
    step "reads" { on = "h", run = function(ctx)
      local n = ctx.params.reads
      local t0 = sys.clock()
      for _ = 1, n do
        fs.stat("/etc/hostname")
      end
      local t = sys.clock() - t0
      ctx.log("bench reads %d %.6f", n, t)
    end },
    step "writes" { on = "h", run = function(ctx)
      local n = ctx.params.writes
      local t0 = sys.clock()
      for i = 1, n do
        fs.write(ctx.params.dir .. "/f", tostring(i) .. "\n")
      end
      local t = sys.clock() - t0
      ctx.log("bench writes %d %.6f", n, t)
    end },
  },
}
