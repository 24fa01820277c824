#!/bin/bash
# A fleet: 20 journaled steps on 4 real hosts (tests/fixtures/hosts.sh: nspawn containers
# with their own root, systemd and sshd on 127.0.0.1, reached with the system's ssh),
# side by side in one run:
#  1. hrun bench/steps20_fleet.lua --hosts INVENTORY --limit four (4 hosts, linear, one
#     batch) against ansible-playbook bench/steps20_remote.yml on the same 4 hosts, -f 10,
#     pipelining, ControlPersist; both cold (every master connection stopped before each
#     run: key exchange and authentication included), wall time with hyperfine;
#  2. how hrun's time grows with the hosts: the same playbook, cold, on 1, 4 and 8 hosts
#     (--limit), on this machine's CPUs.
# Writes $OUT (default docs/bench-fleet.md), keeping what is below its "<!-- by hand:" line.
# Needs root (the fixture), hyperfine, ansible. KEEP=DIR keeps the raw results.
#   RUNS=10 ANSIBLE_RUNS=3 bench/fleet.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
HRUN=${HRUN:-$root/build/hrun}
RUNS=${RUNS:-10}
ANSIBLE_RUNS=${ANSIBLE_RUNS:-3}
OUT=${OUT:-$root/docs/bench-fleet.md}
ROOTFS=${ROOTFS:-$(dirname "$HRUN")/hosts-rootfs}
FIXTURE=$root/tests/fixtures/hosts.sh
N=8
for c in hyperfine ansible-playbook python3 ssh; do
    command -v $c >/dev/null || { echo "needs $c" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "needs root (tests/fixtures/hosts.sh boots nspawn hosts)" >&2; exit 1; }
[ -x "$(dirname "$HRUN")/hrun-portable" ] || { echo "needs $(dirname "$HRUN")/hrun-portable" >&2; exit 1; }
PORT=${PORT:-$(python3 -c '
import random, socket
for _ in range(500):
    base, held = random.randint(20000, 32000 - 8), []
    try:
        for p in range(base, base + 8):
            s = socket.socket(); held.append(s); s.bind(("127.0.0.1", p))
        print(base); break
    except OSError: pass
    finally:
        for s in held: s.close()
')}

work=$(mktemp -d /tmp/hrun-bench-fleet-XXXXXX)
hosts=$work/hosts
stop_masters=$root/bench/stop-masters.sh
cleanup() {
    set +e
    for d in "$work"/state/ssh "$work/acp"; do [ -d "$d" ] && "$stop_masters" "$d"; done
    "$FIXTURE" down "$hosts"
    [ -z "${KEEP:-}" ] || { mkdir -p "$KEEP" && cp "$work"/*.json "$KEEP"/; }
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

"$FIXTURE" build "$ROOTFS"
"$FIXTURE" up "$hosts" "$N" "$PORT" "$ROOTFS"
export HRUN_SSH_CONFIG=$hosts/ssh_config
uptime > "$work/load-start"
mkdir -p "$work/acp"

# the inventory: h1…h8 (the fixture's aliases host1…host8), all in "servers"; "four" is h1…h4
{
    for i in $(seq 1 $N); do echo "host \"h$i\" { url = \"host$i\", groups = { \"servers\" } }"; done
    echo 'group "four" { "h1", "h2", "h3", "h4" }'
} > "$work/inventory.lua"
hrun_fleet="$HRUN $root/bench/steps20_fleet.lua --hosts $work/inventory.lua --state $work/state"
# the first run uploads the portable build to each host and makes the journal
$hrun_fleet > "$work/first.txt"

prep="$stop_masters $work/state/ssh"
hyperfine -N --warmup 1 --runs "$RUNS" --export-json "$work/hrun1.json" --prepare "$prep" \
    -n "hrun, 1 host" "$hrun_fleet --limit h1" > /dev/null
hyperfine -N --warmup 1 --runs "$RUNS" --export-json "$work/hrun4.json" --prepare "$prep" \
    -n "hrun, 4 hosts" "$hrun_fleet --limit four" > /dev/null
hyperfine -N --warmup 1 --runs "$RUNS" --export-json "$work/hrun8.json" --prepare "$prep" \
    -n "hrun, 8 hosts" "$hrun_fleet" > /dev/null
"$stop_masters" "$work/state/ssh"

for i in 1 2 3 4; do
    echo "host$i ansible_host=127.0.0.1 ansible_port=$((PORT + i - 1)) ansible_user=root" \
        "ansible_ssh_private_key_file=$hosts/id ansible_python_interpreter=/usr/bin/python3"
done > "$work/inventory.ini"
export ANSIBLE_PIPELINING=1 ANSIBLE_SSH_CONTROL_PATH_DIR=$work/acp ANSIBLE_HOST_KEY_CHECKING=True ANSIBLE_FORKS=10
export ANSIBLE_SSH_ARGS="-o ControlMaster=auto -o ControlPersist=60s -o UserKnownHostsFile=$hosts/known_hosts -o GlobalKnownHostsFile=/dev/null -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes"
ansible-playbook -f 10 -i "$work/inventory.ini" "$root/bench/steps20_remote.yml" > "$work/ansible-check.txt"
hyperfine -N --warmup 1 --runs "$ANSIBLE_RUNS" --export-json "$work/ansible4.json" \
    --prepare "$stop_masters $work/acp" \
    -n "ansible-playbook, 4 hosts, -f 10, pipelining" \
    "ansible-playbook -f 10 -i $work/inventory.ini $root/bench/steps20_remote.yml" > /dev/null
uptime > "$work/load-end"

python3 - "$work" "$OUT" "$(nproc)" "$RUNS" "$ANSIBLE_RUNS" <<'PY'
import json, os, sys, platform, datetime
work, out, ncpu, runs, aruns = sys.argv[1:6]
def hf(name): return json.load(open(os.path.join(work, name)))["results"][0]
def ms(x): return "%.1f ms" % (x * 1e3) if x is not None else "–"
def row(label, r):
    return "| %s | %s | %s ± %s | %s | %s |" % (label, ms(r["median"]), ms(r["mean"]), ms(r["stddev"]), ms(r["min"]),
                                            ms(r["max"]))
h1, h4, h8, a4 = hf("hrun1.json"), hf("hrun4.json"), hf("hrun8.json"), hf("ansible4.json")
load0 = open(os.path.join(work, "load-start")).read().strip()
load1 = open(os.path.join(work, "load-end")).read().strip()
L = []
A = L.append
A("# A fleet: hrun against ansible-playbook on 4 hosts, and hrun on 1, 4 and 8")
A("")
A("Written by `bench/fleet.sh` on %s (%s CPUs, %s), %s. Eight real hosts: nspawn containers"
  % (platform.node() or "this machine", ncpu, platform.release(), datetime.date.today().isoformat()))
A("booted by `tests/fixtures/hosts.sh`, each with its own root, systemd and OpenSSH sshd on 127.0.0.1,")
A("reached with the system's `ssh` (without the network's latency: the numbers are the software's")
A("cost, on the same 2 CPUs as the hosts themselves). Load: `%s` at the start, `%s` at the end." % (load0, load1))
A("")
A("    RUNS=%s ANSIBLE_RUNS=%s bench/fleet.sh" % (runs, aruns))
A("")
A("`bench/steps20_fleet.lua`: 20 steps, each `exec.run({\"/bin/true\"}, {changed = false})` on the host,")
A("its intent and result journaled there (the host's agent) and here (the host's member journal),")
A("strategy linear (no host starts a step before every host has ended the one before), one")
A("batch, `--forks` 10; `hrun … --hosts INVENTORY --limit …`. Against `bench/steps20_remote.yml`")
A("(20 `command: /bin/true` tasks, `changed_when: false`, no facts) with `ansible-playbook -f 10`,")
A("`ANSIBLE_PIPELINING=1`, `ControlMaster=auto`, `ControlPersist=60s`. Both *cold*: hyperfine's")
A("`--prepare` stops every master connection (hrun's under its state's `ssh/`, ansible's control")
A("path dir) before each run, so every run connects to every host from nothing. The portable")
A("build is already on the hosts (a first run put it there).")
A("")
A("| command | median | mean ± σ | min | max |")
A("|---|---|---|---|---|")
A(row("hrun, 20 steps on 4 hosts", h4))
A(row("ansible-playbook, 20 tasks on 4 hosts, -f 10, pipelining", a4))
A("")
A("**hrun is %.0f× faster than ansible-playbook** on 4 hosts, cold against cold (goal: at least 25×)."
  % (a4["median"] / h4["median"]))
A("")
A("## How hrun's time grows with the hosts")
A("")
A("| hosts | median | mean ± σ | min | max |")
A("|---|---|---|---|---|")
A(row("1", h1))
A(row("4", h4))
A(row("8", h8))
A("")
A("From 1 to 8 hosts the run takes %.1f× as long; each host is a process of its own here (its" % (h8["median"] / h1["median"]))
A("member run: hrun's start, its journal, its ssh), and the hosts' sshd and agents share the")
A("same %s CPUs." % ncpu)
A("")
MARK = "<!-- by hand:"
old = open(out).read() if os.path.exists(out) else ""
hand = old[old.index(MARK):] if MARK in old else ""
open(out, "w").write("\n".join(L) + ("\n" + hand if hand else ""))
print("fleet: hrun 1/4/8 hosts %s / %s / %s; ansible 4 hosts %s; %.1fx"
      % (ms(h1["median"]), ms(h4["median"]), ms(h8["median"]), ms(a4["median"]), a4["median"] / h4["median"]))
PY
