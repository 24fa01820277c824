-- Phase 2's services (the media stack), with the shared homelab.lua:
--   hrun playbooks/phase2-media-stack.lua --params playbooks/params/homelab.lua \
--       --params playbooks/params/phase2-homelab.lua
-- Gluetun first: the download clients use its network (--network=container:gluetun),
-- so their URLs are Gluetun's published ports.
return {
  vpn = { unit = "podman-gluetun", url = "http://127.0.0.1:8000/v1/vpn/status", match = '"status":"running"' },
  -- the library stays on the array (NFS from ZimaOS until phase 4), at the same paths
  media_paths = { "/mnt/array/media/tv", "/mnt/array/media/movies", "/mnt/array/media/music" },
  services = {
    { name = "gluetun", unit = "podman-gluetun", data = "gluetun", to = "/var/lib/gluetun",
      url = "http://127.0.0.1:8000/v1/vpn/status", match = "running" },
    { name = "qbittorrent", unit = "podman-qbittorrent", data = "qbittorrent", to = "/var/lib/qbittorrent",
      url = "http://127.0.0.1:8080/", host = "torrent.example.org", public = "https://torrent.example.org/" },
    { name = "prowlarr", unit = "podman-prowlarr", data = "prowlarr", to = "/var/lib/prowlarr",
      url = "http://127.0.0.1:9696/ping", host = "prowlarr.example.org",
      sqlite = { { file = "prowlarr.db", tables = { "Indexers", "History" } } } },
    { name = "sonarr", unit = "podman-sonarr", data = "sonarr", to = "/var/lib/sonarr",
      url = "http://127.0.0.1:8989/ping", host = "sonarr.example.org",
      sqlite = { { file = "sonarr.db", tables = { "Series", "Episodes", "History" } } } },
    { name = "radarr", unit = "podman-radarr", data = "radarr", to = "/var/lib/radarr",
      url = "http://127.0.0.1:7878/ping", host = "radarr.example.org",
      sqlite = { { file = "radarr.db", tables = { "Movies", "History" } } } },
    { name = "lidarr", unit = "podman-lidarr", data = "lidarr", to = "/var/lib/lidarr",
      url = "http://127.0.0.1:8686/ping", host = "lidarr.example.org",
      sqlite = { { file = "lidarr.db", tables = { "Artists", "History" } } } },
    { name = "bazarr", unit = "podman-bazarr", data = "bazarr", to = "/var/lib/bazarr",
      url = "http://127.0.0.1:6767/", host = "bazarr.example.org",
      sqlite = { { file = "db/bazarr.db", tables = { "table_history", "table_history_movie" } } } },
    { name = "emby", unit = "podman-emby", data = "emby", to = "/var/lib/emby",
      url = "http://127.0.0.1:8096/emby/System/Info/Public", host = "emby.example.org",
      public = "https://emby.example.org/emby/System/Info/Public",
      -- the watch history: UserDatas
      sqlite = { { file = "data/library.db", tables = { "MediaItems", "UserDatas" } },
        { file = "data/users.db", tables = { "LocalUsersv2" } } } },
  },
}
