-- Fuzz driver: hash.import of sha256sum, b2sum, xxhsum and coreutils files. It gives
-- a manifest or nil and a message, never raises; a manifest has no more files than
-- the input has lines. Then the same bytes as a manifest's packed entries (a damaged
-- journal): reading them gives entries or the error that says they do not decode.
local priv = ...
local fs = require "hrun.fs"
local hash = require "hrun.hash"

local dir = assert(os.getenv("HRUN_FUZZ_TMP"), "HRUN_FUZZ_TMP: a scratch directory")
assert(fs.exists(dir) or fs.mkdir(dir, { parents = true }))
local journal = assert(require("hrun.journal").open(priv, dir .. "/state"))
priv.setjournal(function()
  return journal.db
end)
local file = dir .. "/input"

return function(data)
  assert(fs.write(file, data))
  local lines = select(2, data:gsub("\n", "")) + 1
  for _, format in ipairs({ "sha256sum", "b2sum", "xxhsum", "coreutils" }) do
    local ok, m, err = pcall(hash.import, file, { format = format, root = dir, name = "fuzz" })
    assert(ok, m)
    if m then
      assert(m.files <= lines, "hash.import: more files than lines")
    else
      assert(type(err) == "string", "hash.import: no manifest and no message")
    end
  end
  local db = journal.db
  db:run("DELETE FROM chunks WHERE manifest IN (SELECT id FROM manifests WHERE name = 'packed')")
  db:run("DELETE FROM manifests WHERE name = 'packed'")
  local _, id = db:run("INSERT INTO manifests (name, root, algo, status, started) " ..
    "VALUES ('packed', ?, 'xxh128', 'complete', 0)", dir)
  db:run("INSERT INTO chunks (manifest, entries, last, data) VALUES (?, 1, x'', CAST(? AS BLOB))", id, data)
  for _, read in ipairs({
    function() return hash.export("packed", dir .. "/out", { format = "hrun" }) end,
    function() return hash.export("packed", dir .. "/out", { format = "coreutils" }) end,
    function() return hash.compare("packed", "packed") end,
  }) do
    local ok, err = pcall(read)
    assert(ok or tostring(err):find("a manifest's entries do not decode", 1, true), err)
  end
end
