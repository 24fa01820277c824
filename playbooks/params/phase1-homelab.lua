-- Phase 1's services (the plan's non-critical ones), with the shared homelab.lua:
--   hrun playbooks/phase1-non-critical.lua --params playbooks/params/homelab.lua \
--       --params playbooks/params/phase1-homelab.lua
return {
  services = {
    { name = "uptime-kuma", unit = "podman-uptime-kuma", data = "uptime-kuma", to = "/var/lib/uptime-kuma",
      url = "http://127.0.0.1:3001/", host = "status.example.org", public = "https://status.example.org/",
      old_url = "http://zimaos.lan:3001/",
      sqlite = { { file = "kuma.db", tables = { "monitor", "heartbeat", "notification" } } } },
    { name = "stirling-pdf", unit = "podman-stirling-pdf", data = "stirling-pdf", to = "/var/lib/stirling-pdf",
      url = "http://127.0.0.1:8081/", host = "pdf.example.org", public = "https://pdf.example.org/" },
    { name = "memos", unit = "podman-memos", data = "memos", to = "/var/lib/memos",
      url = "http://127.0.0.1:5230/healthz", host = "memos.example.org", public = "https://memos.example.org/",
      sqlite = { { file = "memos_prod.db", tables = { "memo", "resource", "user" } } } },
    { name = "linkwarden", unit = "podman-linkwarden", data = "linkwarden", to = "/var/lib/linkwarden",
      url = "http://127.0.0.1:3000/", host = "links.example.org", public = "https://links.example.org/",
      postgres = { { database = "linkwarden" } } },
    { name = "swingmusic", unit = "podman-swingmusic", data = "swingmusic", to = "/var/lib/swingmusic",
      url = "http://127.0.0.1:1970/", host = "music.example.org", public = "https://music.example.org/" },
  },
  max_downtime = 0,
}
