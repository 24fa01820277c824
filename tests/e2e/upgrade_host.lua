-- The sandbox host of playbooks/nixos-upgrade-24.05-24.11.lua, shared by its end-to-end
-- spec (upgrade_spec.lua) and its plan-against-run bench (bench/plan.sh): a private nix
-- store with generations 1–2 of hwc-server's flake (in git) and a nixos-rebuild
-- stand-in, a PostgreSQL 15 cluster, systemd in nspawn running units named like the
-- server's. Loaded with dofile from a spec (it uses tests/spec.lua's helpers).

local ROOT = exec.run({ "realpath", arg[0]:match("^(.*)/tests/[^/]+$") }, { readonly = true }).stdout:gsub("\n$", "")
local PLAYBOOK = ROOT .. "/playbooks/nixos-upgrade-24.05-24.11.lua"

local function unit(description, port)
  return string.format("[Unit]\nDescription=%s\n[Service]\nExecStart=/bin/busybox httpd -f -p 127.0.0.1:%s -h /srv\n"
    .. "[Install]\nWantedBy=multi-user.target\n", description, port)
end

-- The host: returns a table with the directories, the environment for hrun and the
-- params file of this sandbox (extra: more params).
local function server(extra)
  local h = {}
  h.nix, h.env = nix_host(true)
  local pg_env, pg_dir = pg_cluster()
  local immich_port = free_port()
  local bus = systemd_container({
    ["postgresql.service"] = unit("PostgreSQL (stand-in)", free_port()),
    ["podman-immich-server.service"] = unit("immich-server (stand-in)", immich_port),
  })
  for k, v in pairs(pg_env) do
    h.env[k] = v
  end
  for k, v in pairs(bus) do
    h.env[k] = v
  end
  h.pg_env, h.pg_dir = pg_env, pg_dir
  h.etc = h.nix .. "/etc-nixos"
  h.work = tmpdir()
  h.state = h.work .. "/state"
  h.backups = h.work .. "/backups"
  local params = {
    flake = h.etc, host = "hwc-server",
    inputs = {
      ["nixpkgs-stable"] = "path:" .. h.nix .. "/pkgs-{to}",
      ["home-manager-stable"] = "path:" .. h.nix .. "/home-manager-{to}",
      ["agenix-stable"] = "path:" .. h.nix .. "/agenix",
    },
    -- this host is hybrid: the container's systemd runs on the unified (v2) hierarchy
    cgroup = fs.exists("/sys/fs/cgroup/unified/cgroup.controllers") and "/sys/fs/cgroup/unified" or "/sys/fs/cgroup",
    profile = h.nix .. "/profiles/system", store = h.env.NIX_STORE_DIR, backup_dir = h.backups,
    pg = { enabled = true, unit = "postgresql", major = 15, host = pg_dir, port = tonumber(pg_env.PGPORT),
      user = "postgres", extensions = { "vectors", "vchord" } },
    immich = { unit = "podman-immich-server", url = "http://127.0.0.1:" .. immich_port .. "/health",
      required = true, database = "immich", owner = "immich" },
  }
  for k, v in pairs(extra or {}) do
    params[k] = v
  end
  h.params = h.work .. "/server.json"
  fs.write(h.params, json.encode(params))
  return h
end

-- What the rollback must give back: the flake's files (git's own aside) and HEAD, the
-- current generation.
local function snapshot(h)
  local files = {}
  for path, desc in pairs(tree(h.etc)) do
    if path ~= ".git" and path:sub(1, 5) ~= ".git/" then
      files[path] = desc
    end
  end
  return {
    flake = files,
    head = exec.run({ "git", "-C", h.etc, "rev-parse", "HEAD" }, { readonly = true }).stdout,
    current = exec.run({ "readlink", h.nix .. "/profiles/system" }, { readonly = true }).stdout,
  }
end

return { ROOT = ROOT, PLAYBOOK = PLAYBOOK, server = server, snapshot = snapshot }
