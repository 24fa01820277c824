-- Parameters of nixos-upgrade-24.05-24.11.lua for hwc-server, as its upgrade plan has it.
-- The next release is the same playbook: -p from=24.11 -p to=25.05.
--   hrun plan playbooks/nixos-upgrade-24.05-24.11.lua --params playbooks/params/hwc-server-24.11.lua
return {
  from = "24.05", to = "24.11",
  flake = "/home/eric/.nixos",
  host = "hwc-server",
  inputs = {
    ["nixpkgs-stable"] = "github:NixOS/nixpkgs/nixos-{to}",
    ["home-manager-stable"] = "github:nix-community/home-manager/release-{to}",
    ["agenix-stable"] = "github:ryantm/agenix", -- latest: compatible with 24.11
  },
  backup_dir = "/mnt/hot/backups",
  flake_backup = "/home/eric/.nixos.backup.24.05",
  pg = { enabled = true, unit = "postgresql", major = 15, host = "", port = 0, user = "postgres",
    extensions = { "vectors", "vchord" } },
  units = { "postgresql", "podman-immich-server", "tailscaled" },
  failed_allowed = {},
  immich = { unit = "podman-immich-server", url = "http://127.0.0.1:2283/api/server/ping", required = false,
    database = "immich", owner = "immich" },
  nvidia = true,                           -- Pascal, hardware.nvidia.open = false
  reset_immich = false,
}
