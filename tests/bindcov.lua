-- bindcov: every native function in the registry is exercised by at least one test.
-- Runs after all specs (CTest fixture cleanup); they append the names of the
-- primitives they called to the coverage file (HRUN_COVERAGE).
local file = ...
local listing = exec.run({ sys.env("HRUN_BIN") or arg[-1] or "hrun", "help", "modules", "--json" },
  { readonly = true }).stdout
local called = {}
for name in (fs.read(file) or ""):gmatch("[^\n]+") do
  called[name] = true
end
local missing, total = {}, 0
for line in listing:gmatch("[^\n]+") do
  local p = json.decode(line)
  total = total + 1
  if not called[p.name] then
    missing[#missing + 1] = p.name
  end
end
assert(total > 0, "no primitives listed")
if next(called) == nil then
  print("no coverage recorded in " .. file .. ": run the whole suite (ctest), not this test alone")
  print(string.format("0 passed, %d failed", total))
  os.exit(1)
end
for _, name in ipairs(missing) do
  print("never exercised by a test: " .. name)
end
print(string.format("%d passed, %d failed", total - #missing, #missing))
os.exit(#missing == 0 and 0 or 1)
