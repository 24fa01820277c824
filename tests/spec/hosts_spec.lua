-- The fixture for hosts reached over ssh (ssh_hosts, tests/fixtures/hosts.sh) is what the
-- remote tests stand on: each host is its own machine, the controller's ssh reaches it
-- by alias and by URL with the test's key and known_hosts, a cut really cuts (an open
-- channel stops getting answers, and gets them again after the restore), a new host key
-- is refused, and down leaves nothing behind.

-- is the process running (not gone, not a zombie the runner has yet to reap)?
local function running(pid)
  local status = fs.read("/proc/" .. pid .. "/status")
  return status ~= nil and not status:find("State:%s*Z")
end

local function ssh(hosts, ...)
  return exec.run({ "ssh", "-F", hosts.ssh_config, ... }, { check = false, timeout = 60 })
end

-- an open `ssh host cat` channel: an answer before the cut, none during it, one again
-- after the restore; the cut and the restore through the fixture's script
local CHANNEL = [[
import os, select, subprocess, sys, time
cfg, alias, fixture, dir, i = sys.argv[1:6]
p = subprocess.Popen(["ssh", "-F", cfg, alias, "cat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
def ask(word, wait):
    # what comes back within wait seconds, until the word does
    p.stdin.write(word.encode() + b"\n"); p.stdin.flush()
    got, end = b"", time.time() + wait
    while not got.endswith(word.encode() + b"\n") and time.time() < end:
        if select.select([p.stdout], [], [], 0.1)[0]:
            got += os.read(p.stdout.fileno(), 100)
    return got.decode().replace("\n", " ").strip()
try:
    print("before=" + ask("one", 10))
    subprocess.run([fixture, "cut", dir, i], check=True)
    print("during=" + ask("two", 1.5))
    subprocess.run([fixture, "restore", dir, i], check=True)
    t = time.time()
    print("after=" + ask("three", 20))
    print("resumed_in=%.1f" % (time.time() - t))
finally:
    p.kill(); p.wait()
]]

describe("ssh_hosts", function()
  it("boots hosts of their own, reached by alias and URL; cuts, restores and rekeys one", function()
    local hosts = ssh_hosts(2)
    local h1, h2 = hosts[1], hosts[2]
    eq(h1.url, "ssh://root@127.0.0.1:" .. h1.port)
    eq(h2.port, h1.port + 1)
    eq((h1:sh("hostname")), "host1\n")
    eq((ssh(hosts, "host2", "hostname").stdout), "host2\n")
    eq((ssh(hosts, h1.url, "hostname").stdout), "host1\n")
    eq((h1:sh("systemctl is-active ssh")), "active\n")
    -- own root file systems, own machine ids, own host keys
    local out, code = h1:sh("echo only-here > /root/mark")
    eq({ out, code }, { "", 0 })
    eq(fs.read(h1.root .. "/root/mark"), "only-here\n")
    eq(fs.stat(h2.root .. "/root/mark"), nil)
    eq(select(2, h2:sh("test -e /root/mark")), 1)
    ok(h1:sh("cat /etc/machine-id") ~= h2:sh("cat /etc/machine-id"), "machine ids differ")
    local keys = fs.read(hosts.known_hosts)
    local k1 = keys:match("%[127%.0%.0%.1%]:" .. h1.port .. " ssh%-ed25519 (%S+)")
    local k2 = keys:match("%[127%.0%.0%.1%]:" .. h2.port .. " ssh%-ed25519 (%S+)")
    ok(k1 and k2 and k1 ~= k2, "each host has its own keys")
    -- the controller's files: what a tool under test is given
    has(fs.read(hosts.ssh_config), "Host host2\n  HostName 127.0.0.1\n  Port " .. h2.port .. "\n  User root\n")
    has(fs.read(hosts.ssh_config), "StrictHostKeyChecking yes")
    ok(fs.stat(hosts.key), "the private key")

    -- a cut: an open channel gets no answer; after the restore it gets them all
    local r = exec.run({ "python3", "-c", CHANNEL, hosts.ssh_config, "host1", FIXTURES .. "/hosts.sh", hosts.dir, "1" },
      { timeout = 60 })
    has(r.stdout, "before=one\n")
    has(r.stdout, "during=\n")
    has(r.stdout, "after=two three\n")
    -- no new connection during a cut; the other host is not cut
    h1:cut()
    has(exec.run({ "iptables", "-S", "INPUT" }).stdout, "--dport " .. h1.port)
    r = ssh(hosts, "-o", "ConnectTimeout=1", "host1", "true")
    eq(r.ok, false)
    has(r.stderr, "timed out")
    eq((h2:sh("hostname")), "host2\n")
    h1:restore()
    eq((h1:sh("hostname")), "host1\n")
    -- (this host's rule only: other tests may cut hosts of their own meanwhile)
    eq(exec.run({ "iptables", "-S" }).stdout:find("--dport " .. h1.port .. " ", 1, true), nil)

    -- new host keys: the controller's ssh refuses them, the fixture knows them
    h2:rekey()
    r = ssh(hosts, "host2", "true")
    eq(r.ok, false)
    has(r.stderr, "REMOTE HOST IDENTIFICATION HAS CHANGED")
    eq((h2:sh("hostname")), "host2\n")
    eq(ssh(hosts, "host1", "true").ok, true)

    -- a dynamic hrun build runs inside as if installed from a package
    h1:install_hrun()
    eq((h1:sh([[hrun -e 'io.write(fs.read("/etc/hostname"))']])), "host1\n")
    has((h1:sh("hrun version")), "hrun ")
  end)

  it("trusts no host with trust = false; down leaves no container, mount, cgroup or rule", function()
    local hosts = ssh_hosts(1, { trust = false })
    eq(fs.read(hosts.known_hosts), "")
    local r = ssh(hosts, "host1", "true")
    eq(r.ok, false)
    has(r.stderr, "Host key verification failed")
    hosts[1]:cut()
    local tag = fs.read(hosts.dir .. "/tag"):gsub("%s+$", "")
    local nspawn = fs.read(hosts.dir .. "/h1/nspawn.pid"):gsub("%s+$", "")
    ok(running(nspawn), "the host's nspawn runs")
    exec.run({ FIXTURES .. "/hosts.sh", "down", hosts.dir }, { timeout = 120 })
    eq(fs.stat(hosts.dir), nil)
    eq(running(nspawn), false)
    eq(exec.run({ "findmnt", "-rn", "-o", "TARGET" }).stdout:find(hosts.dir, 1, true), nil)
    eq(exec.run({ "iptables", "-S" }).stdout:find("hrun-hosts:" .. tag, 1, true), nil)
    eq(fs.stat("/sys/fs/cgroup/unified/hrun-hosts-" .. tag), nil)
    eq(fs.stat("/sys/fs/cgroup/systemd/hrun-hosts-" .. tag), nil)
    eq(exec.run({ "pgrep", "-f", "hrun-" .. tag }, { check = false }).stdout, "")
    r = exec.run({ "ssh", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "ConnectTimeout=1",
      "-p", tostring(hosts[1].port), "root@127.0.0.1", "true" }, { check = false })
    has(r.stderr, "Connection refused")
  end)
end)
