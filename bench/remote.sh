#!/bin/bash
# Reaching another host: one real host (tests/fixtures/hosts.sh: an nspawn container with
# its own root, systemd and sshd on 127.0.0.1:PORT, reached with the system's ssh), and,
# side by side in one run:
#  1. the floors: a fresh `ssh host true`, `ssh host true` over a ControlMaster, one
#     request/answer on a long-lived `ssh host cat` channel (a python loop), hashing the
#     portable build (its name on hosts: xxh128) against hrun's bare start, the portable
#     build's own start over ssh;
#  2. one primitive call there on a warm channel: bench/remote_calls.lua, READS fs.stat and
#     WRITES fs.write (journaled on both sides) timed inside their steps, RUNS runs; the
#     same loops on this machine (-H h=local);
#  3. a 20-step playbook on the host (bench/steps20_remote.lua) against ansible-playbook
#     with pipelining and ControlPersist (bench/steps20_remote.yml), wall time with
#     hyperfine, the ssh connection included: hrun with no master connection left from
#     before (stopped before each run), with one left (warm), and its first run on a host
#     (the portable build uploaded: removed there before each run); ansible with its own
#     master stopped before each run.
# Writes $OUT (default docs/bench-remote.md), keeping what is below its "<!-- by hand:" line
# (a profile and its findings). Needs root (the fixture), hyperfine, ansible. KEEP=DIR keeps
# the raw results; HRUN=…/hrun (its hrun-portable beside it), HRUN_PATH=… another stdlib.
#   RUNS=10 ANSIBLE_RUNS=5 READS=2000 WRITES=500 bench/remote.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
HRUN=${HRUN:-$root/build/hrun}
RUNS=${RUNS:-10}
ANSIBLE_RUNS=${ANSIBLE_RUNS:-5}
READS=${READS:-2000}
WRITES=${WRITES:-500}
OUT=${OUT:-$root/docs/bench-remote.md}
ROOTFS=${ROOTFS:-$(dirname "$HRUN")/hosts-rootfs}
FIXTURE=$root/tests/fixtures/hosts.sh
for c in hyperfine ansible-playbook python3 ssh; do
    command -v $c >/dev/null || { echo "needs $c" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "needs root (tests/fixtures/hosts.sh boots an nspawn host)" >&2; exit 1; }
[ -x "$(dirname "$HRUN")/hrun-portable" ] || { echo "needs $(dirname "$HRUN")/hrun-portable" >&2; exit 1; }
PORT=${PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}

work=$(mktemp -d /tmp/hrun-bench-remote-XXXXXX)
hosts=$work/hosts
stop_masters=$root/bench/stop-masters.sh
cleanup() {
    set +e
    for d in "$work"/state*/ssh "$work/acp" "$work/cm"; do [ -d "$d" ] && "$stop_masters" "$d"; done
    "$FIXTURE" down "$hosts"
    # KEEP=DIR: the raw results (hyperfine's JSON, the logged loops) kept there
    [ -z "${KEEP:-}" ] || { mkdir -p "$KEEP" && cp "$work"/*.json "$work"/*.txt "$KEEP"/; }
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

"$FIXTURE" build "$ROOTFS"
"$FIXTURE" up "$hosts" 1 "$PORT" "$ROOTFS"
cfg=$hosts/ssh_config
export HRUN_SSH_CONFIG=$cfg
uptime > "$work/load-start"
mkdir -p "$work/cm" "$work/acp"

# 1. the floors
hash=$("$HRUN" -e "print(require('hrun.hash').file('$(dirname "$HRUN")/hrun-portable'):sub(1, 16))")
scp -q -F "$cfg" "$(dirname "$HRUN")/hrun-portable" host1:/root/hrun-portable
ssh -F "$cfg" -o ControlMaster=yes -o ControlPath="$work/cm/m" -o ControlPersist=600 -f -N host1
hyperfine -N --warmup 2 --runs "$RUNS" --export-json "$work/floors.json" \
    -n "a fresh ssh host true" "ssh -F $cfg -o ControlPath=none host1 true" \
    -n "ssh host true over a ControlMaster" "ssh -F $cfg -o ControlPath=$work/cm/m host1 true" \
    -n "the portable build's start there (hrun-portable version, over the master)" \
    "ssh -F $cfg -o ControlPath=$work/cm/m host1 /root/hrun-portable version" \
    -n "hrun's start and hashing the portable build (its name on hosts: xxh128, hrun -e hash.file)" \
    "$HRUN -e \"require('hrun.hash').file('$(dirname "$HRUN")/hrun-portable')\"" \
    -n "hrun's start alone (hrun -e '')" "$HRUN -e ''" \
    > "$work/floors.txt"
python3 - "$cfg" "$READS" "$RUNS" > "$work/cat.json" <<'PY'
import json, subprocess, sys, time
cfg, n, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
p = subprocess.Popen(["ssh", "-F", cfg, "-o", "ControlPath=none", "host1", "cat"],
                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
line = b'{"t":"call","name":"fs.stat","args":["/etc/hostname"],"seq":1}\n'
p.stdin.write(line); p.stdin.flush(); p.stdout.readline()   # the channel is up
per = []
for _ in range(runs):
    t = time.monotonic()
    for i in range(n):
        p.stdin.write(line); p.stdin.flush(); p.stdout.readline()
    per.append((time.monotonic() - t) / n)
p.stdin.close(); p.wait()
print(json.dumps(per))
PY

# 2. one call on a warm channel, RUNS runs, there and here
calls() {
    local out=$1
    shift
    : > "$out"
    for _ in $(seq 1 "$RUNS"); do
        "$HRUN" "$root/bench/remote_calls.lua" --json -p reads="$READS" -p writes="$WRITES" "$@" |
            python3 -c '
import json, sys
for l in sys.stdin:
    try: e = json.loads(l)
    except ValueError: continue
    m = e.get("message") or ""
    if m.startswith("bench "): print(m)' >> "$out"
    done
}
calls "$work/calls-remote.txt" --state "$work/state-calls"
calls "$work/calls-local.txt" --state "$work/state-calls-local" -H h=local
agent_db=$hosts/h1/root/var/lib/hrun/agent/agent.db
sqlite3 "$agent_db" "SELECT count(*) FROM effects" > "$work/agent-effects" 2>/dev/null || echo "?" > "$work/agent-effects"

# 3. 20 steps on the host: hrun (cold, warm, first upload) and ansible-playbook
s20="$HRUN $root/bench/steps20_remote.lua --state $work/state20"
"$HRUN" "$root/bench/steps20_remote.lua" --state "$work/state20" > /dev/null   # the journal made
hyperfine -N --warmup 1 --runs "$RUNS" --export-json "$work/hrun20.json" \
    --prepare "$stop_masters $work/state20/ssh" \
    -n "hrun, 20 steps on the host, no master connection before (cold ssh), portable build there" "$s20" \
    > "$work/hrun20.txt"
hyperfine -N --warmup 1 --runs "$RUNS" --export-json "$work/hrun20warm.json" \
    -n "hrun, 20 steps on the host, the master connection of the run before still up (ControlPersist)" "$s20" \
    > "$work/hrun20warm.txt"
hyperfine --warmup 0 --runs "$RUNS" --export-json "$work/hrun20up.json" \
    --prepare "$stop_masters $work/state20/ssh; rm -f $hosts/h1/root/var/lib/hrun/agent/hrun-*" \
    -n "hrun, 20 steps on the host, cold ssh, first run there (the portable build uploaded)" "$s20" \
    > "$work/hrun20up.txt"
"$stop_masters" "$work/state20/ssh"
# the same steps on this machine (-H h=local): the controller's part of a run, no ssh
"$HRUN" "$root/bench/steps20_remote.lua" --state "$work/state20l" -H h=local > /dev/null
hyperfine -N --warmup 1 --runs "$RUNS" --export-json "$work/hrun20local.json" \
    -n "hrun, the same 20 steps on this machine (-H h=local: no ssh, no agent)" \
    "$HRUN $root/bench/steps20_remote.lua --state $work/state20l -H h=local" > "$work/hrun20local.txt"
# ANSIBLE_RUNS=0: no ansible (another build measured against the same host kind)
if [ "$ANSIBLE_RUNS" -gt 0 ]; then
    cat > "$work/inventory" <<EOF
host1 ansible_host=127.0.0.1 ansible_port=$PORT ansible_user=root ansible_ssh_private_key_file=$hosts/id ansible_python_interpreter=/usr/bin/python3
EOF
    export ANSIBLE_PIPELINING=1 ANSIBLE_SSH_CONTROL_PATH_DIR=$work/acp ANSIBLE_HOST_KEY_CHECKING=True
    export ANSIBLE_SSH_ARGS="-o ControlMaster=auto -o ControlPersist=60s -o UserKnownHostsFile=$hosts/known_hosts -o GlobalKnownHostsFile=/dev/null -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes"
    ansible-playbook -i "$work/inventory" "$root/bench/steps20_remote.yml" > "$work/ansible-check.txt"
    hyperfine -N --warmup 1 --runs "$ANSIBLE_RUNS" --export-json "$work/ansible20.json" \
        --prepare "$stop_masters $work/acp" \
        -n "ansible-playbook, 20 tasks on the host, pipelining, ControlPersist, no master before (cold ssh)" \
        "ansible-playbook -i $work/inventory $root/bench/steps20_remote.yml" > "$work/ansible20.txt"
fi
uptime > "$work/load-end"

python3 - "$work" "$OUT" "$READS" "$WRITES" "$hash" "$(stat -c %s "$(dirname "$HRUN")/hrun-portable")" \
    "$(cat "$work/agent-effects")" "$(nproc)" "$RUNS" "$ANSIBLE_RUNS" <<'PY'
import json, os, sys, platform, datetime, statistics as st
work, out, reads, writes, hashname, size, agent_effects, ncpu, runs, aruns = sys.argv[1:11]
reads, writes = int(reads), int(writes)
def hf(name):
    return json.load(open(os.path.join(work, name)))["results"]
def ms(x): return "%.1f ms" % (x * 1e3) if x is not None else "–"
def row(r):
    return "| %s | %s | %s ± %s | %s | %s |" % (r["command"], ms(r["median"]), ms(r["mean"]), ms(r["stddev"]),
                                            ms(r["min"]), ms(r["max"]))
def per_call(path, kind):
    xs = []
    for l in open(os.path.join(work, path)):
        p = l.split()
        if p[1] == kind:
            n, t = int(p[2]), float(p[3])
            xs.append(t / (n + 2))     # + the two sys.clock() calls, timed too
    return xs
def us(xs):
    return "%.0f µs" % (st.median(xs) * 1e6), "%.0f–%.0f µs" % (min(xs) * 1e6, max(xs) * 1e6), len(xs)
floors = hf("floors.json")
cat = json.load(open(os.path.join(work, "cat.json")))
rr, rw = per_call("calls-remote.txt", "reads"), per_call("calls-remote.txt", "writes")
lr, lw = per_call("calls-local.txt", "reads"), per_call("calls-local.txt", "writes")
cold, warm, up = hf("hrun20.json")[0], hf("hrun20warm.json")[0], hf("hrun20up.json")[0]
here = hf("hrun20local.json")[0]
fresh = next(r for r in floors if r["command"].startswith("a fresh ssh"))
ans = hf("ansible20.json")[0] if os.path.exists(os.path.join(work, "ansible20.json")) else None
load0, load1 = open(os.path.join(work, "load-start")).read().strip(), open(os.path.join(work, "load-end")).read().strip()
ratio = ans["median"] / cold["median"] if ans else float("nan")
L = []
A = L.append
A("# Reaching another host: hrun's agent against ansible-playbook")
A("")
A("Written by `bench/remote.sh` on %s (%s CPUs, %s), %s. One real host: an nspawn container"
  % (platform.node() or "this machine", ncpu, platform.release(), datetime.date.today().isoformat()))
A("booted by `tests/fixtures/hosts.sh` with its own root, systemd and OpenSSH sshd on 127.0.0.1,")
A("reached with the system's `ssh` and the fixture's key and known_hosts, as a server on the LAN")
A("would be (without the network's latency: the numbers are the software's cost). Load while")
A("it ran (other sessions share the machine): `%s` at the start, `%s` at the end." % (load0, load1))
A("")
A("    RUNS=%s ANSIBLE_RUNS=%s READS=%d WRITES=%d bench/remote.sh" % (runs, aruns, reads, writes))
A("")
A("## 1. The floors")
A("")
A("| | median | mean ± σ | min | max |")
A("|---|---|---|---|---|")
for r in floors:
    A(row(r))
A("| one request/answer on a long-lived `ssh host cat` channel (a 60-byte line, %d round trips, %d repeats) | %s | | %s | %s |"
  % (reads, len(cat), "%.0f µs" % (st.median(cat) * 1e6), "%.0f µs" % (min(cat) * 1e6), "%.0f µs" % (max(cat) * 1e6)))
A("")
A("## 2. One primitive call on a warm channel")
A("")
A("`bench/remote_calls.lua`: a step `on = \"h\"` doing %d `fs.stat(\"/etc/hostname\")` (a read: not" % reads)
A("journaled), then a step doing %d `fs.write` of a small file (a write: journaled in the host's" % writes)
A("agent.db before it acts and in this controller's journal with its host, both SQLite, WAL,")
A("`synchronous=FULL`), each loop timed inside the step with `sys.clock()` and logged with")
A("`ctx.log`; one run of hrun per repeat, the channel already up (a first step connected it).")
A("The same playbook with `-H h=local` runs the same loops on this machine. The host's agent.db")
A("held %s effects at the end." % agent_effects)
A("")
A("| a call | on the host: median | spread (min–max) | here (`-H h=local`): median | spread | repeats |")
A("|---|---|---|---|---|---|")
m, s, n = us(rr); lm, ls_, _ = us(lr)
A("| `fs.stat` (read) | **%s** | %s | %s | %s | %d |" % (m, s, lm, ls_, n))
m, s, n = us(rw); lm, ls_, _ = us(lw)
A("| `fs.write` (journaled write) | **%s** | %s | %s | %s | %d |" % (m, s, lm, ls_, n))
A("")
A("Goal: at most 1 ms a call; the floor, one request/answer on a long-lived ssh channel, is %.0f µs"
  % (st.median(cat) * 1e6))
A("here (above). A read on the host: %.0f µs, %.1f× the floor; a write: %.0f µs (%.0f µs of it the"
  % (st.median(rr) * 1e6, st.median(rr) / st.median(cat), st.median(rw) * 1e6, st.median(lw) * 1e6))
A("same write's cost here, where the controller's own journal commit is part of both).")
A("")
A("## 3. A 20-step playbook on the host against ansible-playbook")
A("")
A("`bench/steps20_remote.lua` (20 steps `on = \"h\"`, each `exec.run({\"/bin/true\"}, {changed = false})`")
A("there: each command's intent and result journaled on the host and here) against")
A("`bench/steps20_remote.yml` (20 `command: /bin/true` tasks, `changed_when: false`, no facts) with")
A("`ANSIBLE_PIPELINING=1`, `ControlMaster=auto`, `ControlPersist=60s`, an inventory naming the same")
A("host by `ansible_host=127.0.0.1 ansible_port=PORT` with the fixture's key and known_hosts. Wall")
A("time of the whole command with hyperfine. *Cold*: hyperfine's `--prepare` stops every master")
A("connection under the state dir's `ssh/` (hrun's ControlPath) or ansible's control path dir before")
A("each run, so each run starts ssh from nothing (key exchange, authentication); the portable build")
A("(`hrun-%s`, %.1f MB) is already on the host. *Warm*: the master connection the run before left" % (hashname, int(size) / 1e6))
A("(ControlPersist=60) is used. *First run*: the portable build is removed from the host before each")
A("run, so it is uploaded again (over the master, `cat > …`).")
A("")
A("| command | median | mean ± σ | min | max |")
A("|---|---|---|---|---|")
for r in (cold, warm, up, here, ans) if ans else (cold, warm, up, here):
    A(row(r))
A("")
if ans:
    A("**hrun is %.0f× faster than ansible-playbook**, cold against cold (goal: at least 20×); %.0f× with" % (ratio, ans["median"] / warm["median"]))
    A("its master connection warm.")
    A("A cold run cannot take less than its ssh connection (a fresh `ssh host true`, §1: %s) and" % ms(fresh["median"]))
    A("the controller's own part of the same steps, journaled here with `synchronous=FULL` (the row")
    A("`-H h=local`: %s): %s together, %.0f× ansible's %s in this run; 20× would be %s." % (
        ms(here["median"]), ms(fresh["median"] + here["median"]), ans["median"] / (fresh["median"] + here["median"]),
        ms(ans["median"]), ms(ans["median"] / 20)))
A("The first run on a host costs %s more than a run where the" % ms(up["median"] - cold["median"]))
A("portable build is already there (the upload of %.1f MB over ssh and its `mv` into place)." % (int(size) / 1e6))
A("")
# what was written by hand below the marker (a profile, its findings) is kept
MARK = "<!-- by hand:"
old = open(out).read() if os.path.exists(out) else ""
hand = old[old.index(MARK):] if MARK in old else ""
open(out, "w").write("\n".join(L) + ("\n" + hand if hand else ""))
print("calls: read %.0f us, write %.0f us (floor %.0f us); 20 steps: hrun %s cold, %s warm, %s first; ansible %s; %.1fx"
      % (st.median(rr) * 1e6, st.median(rw) * 1e6, st.median(cat) * 1e6, ms(cold["median"]), ms(warm["median"]),
         ms(up["median"]), ms(ans["median"]) if ans else "-", ratio))
PY
