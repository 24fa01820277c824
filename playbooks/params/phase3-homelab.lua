-- Phase 3's services (the critical ones), with the shared homelab.lua:
--   hrun playbooks/phase3-critical-services.lua --params playbooks/params/homelab.lua \
--       --params playbooks/params/phase3-homelab.lua
-- User files and photos stay on the array (phase 4); what moves here is each service's
-- configuration, state and database.
return {
  mandatory_backup = { "vaultwarden" },
  max_downtime = 300,                      -- the plan: no data sync gap over 5 minutes
  services = {
    { name = "nextcloud", unit = "podman-nextcloud", data = "nextcloud", to = "/var/lib/nextcloud",
      url = "http://127.0.0.1:8180/status.php", match = '"installed":true,"maintenance":false',
      host = "cloud.example.org", public = "https://cloud.example.org/status.php",
      postgres = { { database = "nextcloud" } } },
    { name = "immich", unit = "podman-immich-server", data = "immich", to = "/var/lib/immich",
      url = "http://127.0.0.1:2283/api/server/ping", match = "pong", timeout = 300,
      host = "photos.example.org", public = "https://photos.example.org/api/server/ping",
      postgres = { { database = "immich" } } },
    { name = "paperless", unit = "podman-paperless", data = "paperless", to = "/var/lib/paperless",
      url = "http://127.0.0.1:8010/", host = "paperless.example.org",
      postgres = { { database = "paperless" } } },
    { name = "vaultwarden", unit = "podman-vaultwarden", data = "vaultwarden", to = "/var/lib/vaultwarden",
      url = "http://127.0.0.1:8222/alive", host = "vault.example.org", public = "https://vault.example.org/alive",
      sqlite = { { file = "db.sqlite3", tables = { "users", "ciphers", "folders", "attachments" } } } },
    { name = "joplin", unit = "podman-joplin", data = "joplin", to = "/var/lib/joplin",
      url = "http://127.0.0.1:22300/api/ping", match = "Joplin", host = "joplin.example.org",
      postgres = { { database = "joplin" } } },
  },
}
