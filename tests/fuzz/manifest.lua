-- Fuzz driver: hash.import of sha256sum, b2sum, xxhsum and coreutils files. It gives
-- a manifest or nil and a message, never raises; a manifest has no more files than
-- the input has lines.
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
end
