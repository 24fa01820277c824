#!/bin/sh
# Installs what hrun needs to build and test, from Debian 12's apt only. Idempotent.
set -eu
export DEBIAN_FRONTEND=noninteractive
APT="apt-get -y -q -o DPkg::Lock::Timeout=600"
if [ "$(id -u)" != 0 ]; then
    echo "install-deps.sh: run as root (apt-get)" >&2
    exit 1
fi
apt-get update -q
# build: compiler, CMake, the libraries hrun links; lua5.4 brings luac (hrun check's lint);
# zlib1g-dev: libz.a, which SQLite's static archive needs (hrun-portable links -static)
$APT install --no-install-recommends \
    build-essential cmake pkg-config \
    liblua5.4-dev libjansson-dev libedit-dev libsqlite3-dev libssl-dev libbtrfsutil-dev libxxhash-dev libgit2-dev libcurl4-openssl-dev libsystemd-dev libseccomp-dev lua5.4 \
    zlib1g-dev
# tests and checks: a terminal for the REPL tests, the Lua linter, the C formatter, the
# git CLI (the reference the git tests compare with, and git daemon), nix with a private
# store (the nixos tests; nixos-rebuild itself is a stand-in in tests/fixtures), python3
# and openssl (the HTTP fixture and its certificate), systemd-nspawn and mmdebstrap (a real
# systemd in a container for the service tests; without recommends, which would edit
# /etc/nsswitch.conf), podman and runc (containers from an imported busybox image),
# PostgreSQL 15 (the pg tests run a throwaway cluster of their own), clang and its
# libFuzzer runtime (scripts/fuzz.sh), xxhash (xxhsum: the hash tests' reference), file
# (the portable build's test: it says "statically linked"); for the hosts reached over
# ssh (tests/fixtures/hosts.sh): the ssh client and ssh-keygen, iptables (a network cut is
# a DROP rule), rsync (copies into a host). Not openssh-server: the hosts' sshd comes from
# their own rootfs, and on this machine the package would start and enable an sshd of its own;
# zsh, fish and bash-completion: the completion scripts are driven in each shell
$APT install --no-install-recommends tmux lua-check clang-format procps sqlite3 xxhash file \
    btrfs-progs util-linux e2fsprogs git nix-bin python3 openssl \
    systemd-container mmdebstrap podman runc catatonit postgresql-15 postgresql-client-15 \
    clang libclang-rt-14-dev openssh-client iptables rsync zsh fish bash-completion
# benches (bench/): the peer tools they are measured against, and the timers
$APT install --no-install-recommends hyperfine time b3sum rhash hashdeep ansible
