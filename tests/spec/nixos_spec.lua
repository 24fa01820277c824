-- nixos on real nix (Debian's nix-bin with a private, offline store): generations read
-- from the profile directory, rebuild through a nixos-rebuild stand-in that keeps the
-- real command's contract (tests/fixtures/nixos-rebuild), rollback with activation
-- scripts that record being called, closure diffs of built systems, flake inputs.

-- Runs hrun with the host's environment; extra: more variables.
local function hrun_in(env, args, extra)
  local e = {}
  for k, v in pairs(env) do
    e[k] = v
  end
  for k, v in pairs(extra or {}) do
    e[k] = v
  end
  return hrun_cmd(args, { env = e, cwd = env.HOME })
end

-- Evaluates a chunk in hrun -e with the host's environment; returns its stdout.
local function lua_in(env, code)
  local r = hrun_in(env, { "-e", code })
  eq(r.code, 0, r.stderr)
  return r.stdout
end

local function current_link(dir)
  return exec.run({ "readlink", dir .. "/profiles/system" }, { readonly = true }).stdout:gsub("\n$", "")
end

-- The files of /etc/nixos an upgrade changes, as they are now.
local function flake_files(etc)
  return { nix = fs.read(etc .. "/flake.nix"), lock = fs.read(etc .. "/flake.lock"), label = fs.read(etc .. "/label") }
end

local function activations(dir)
  return fs.read(dir .. "/activations")
end

-- The upgrade as a playbook: inputs to 24.11, update, check, switch; -p fail=true makes
-- the last step fail so the run rolls back.
local function upgrade(dir)
  return playbook_file(dir, "upgrade.lua", [[
return playbook {
  name = "upgrade", params = { etc = "", sandbox = "", fail = false },
  phase "flake" {
    step "inputs" {
      run = function(ctx)
        local p = ctx.params
        nixos.flake_set_input(p.etc .. "/flake.nix", "nixpkgs", "path:" .. p.sandbox .. "/pkgs-24.11")
        nixos.flake_set_input(p.etc .. "/flake.nix", "home-manager", "path:" .. p.sandbox .. "/home-manager-24.11")
        nixos.flake_update(p.etc, { inputs = { "nixpkgs", "home-manager" } })
        nixos.flake_check(p.etc)
      end,
    },
  },
  phase "switch" {
    step "switch" {
      run = function(ctx)
        local r = nixos.rebuild("switch", { flake = ctx.params.etc .. "#hrun-test",
          profile = ctx.params.sandbox .. "/profiles/system" })
        ctx.state.generation = r.generation
      end,
    },
    step "verify" {
      run = function(ctx)
        local cur = nixos.current({ profile = ctx.params.sandbox .. "/profiles/system" })
        if ctx.params.fail then error("services did not come back (as the test asked)") end
        ctx.log("now on %s", cur.version)
      end,
    },
  },
}
]])
end

describe("nixos generations", function()
  it("reads the profile directory as nix-env lists it", function()
    local dir, env = nix_host()
    local out = lua_in(env, string.format([[
      for _, g in ipairs(nixos.generations({ profile = %q })) do
        print(g.number, g.current, g.version, g.kernel, g.path, os.time() - g.date < 600)
      end
      local c = nixos.current({ profile = %q })
      print("current", c.number, c.link)
    ]], dir .. "/profiles/system", dir .. "/profiles/system"))
    local lines = {}
    for l in out:gmatch("[^\n]+") do
      lines[#lines + 1] = l
    end
    eq(#lines, 3, out)
    local store = env.NIX_STORE_DIR
    has(lines[1], "1\tfalse\t24.05.20241121.fake (hrun)\t6.6.30\t" .. store .. "/")
    has(lines[2], "2\ttrue\t24.05.20241121.fake (hrun)\t6.6.30\t" .. store .. "/")
    has(lines[2], "nixos-system-hrun-test-24.05\ttrue")
    eq(lines[3], "current\t2\t" .. dir .. "/profiles/system-2-link")
    -- what nix-env itself says
    local listed = exec.run({ "nix-env", "-p", dir .. "/profiles/system", "--list-generations" },
      { env = env, readonly = true }).stdout
    has(listed, "2   ")
    has(listed, "(current)")
  end)

  it("reads the kernel from boot.json when the system has no kernel modules", function()
    local d = tmpdir()
    local sys1 = d .. "/store/0123456789abcdfghijklmnpqrsvwxyz-nixos-system-host-24.11"
    fs.mkdir(sys1, { parents = true })
    fs.write(sys1 .. "/boot.json", json.encode({ ["org.nixos.bootspec.v1"] = {
      kernel = "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-linux-6.6.63/bzImage" } }))
    fs.write(sys1 .. "/nixos-version", "24.11.711815.8edf06bea5bc (Vicuna)\n")
    exec.run({ "ln", "-s", sys1, d .. "/system-7-link" })
    exec.run({ "ln", "-s", "system-7-link", d .. "/system" })
    local gens = assert(nixos.generations({ profile = d .. "/system" }))
    eq(#gens, 1)
    eq({ gens[1].number, gens[1].kernel, gens[1].version, gens[1].current, gens[1].path },
      { 7, "6.6.63", "24.11.711815.8edf06bea5bc (Vicuna)", true, sys1 })
  end)

  it("names a missing profile", function()
    local dir, env = nix_host()
    local out = lua_in(env, string.format([[print(nixos.generations({ profile = %q }))]], dir .. "/nope/system"))
    has(out, "nixos.generations: " .. dir .. "/nope/system: No such file or directory\tENOENT")
  end)

  it("needs a reboot when the kernel, initrd or modules differ from the booted system", function()
    local dir, env = nix_host()
    -- a 24.11 system built beside the profile: another kernel
    local built = lua_in(env, string.format([[
      nixos.flake_set_input(%q, "nixpkgs", "path:%s/pkgs-24.11")
      print(exec.run({ os.getenv("HRUN_NIXOS_REBUILD"), "build", "--flake", %q }, { cwd = %q }).ok)
    ]], dir .. "/etc-nixos/flake.nix", dir, dir .. "/etc-nixos#hrun-test", dir))
    eq(built, "true\n")
    local new = dir .. "/result"
    local out = lua_in(env, string.format([[
      local p = %q
      print(nixos.needs_reboot({ booted = p .. "-1-link", current = p .. "-2-link" }))
      local need, what = nixos.needs_reboot({ booted = p .. "-2-link", current = %q })
      print(need, table.concat(what, ","))
      print(nixos.needs_reboot({ booted = "/nonexistent/booted", current = p }))
    ]], dir .. "/profiles/system", new))
    local lines = {}
    for l in out:gmatch("[^\n]+") do
      lines[#lines + 1] = l
    end
    has(lines[1], "false")
    eq(lines[2], "true\tkernel,initrd,kernel-modules")
    eq(lines[3], "nil\tnixos.needs_reboot: /nonexistent/booted: No such file or directory\tENOENT")
  end)
end)

describe("nixos.flake_set_input", function()
  local FLAKE = [[
{
  # a comment with inputs.nixpkgs.url = "not this";
  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-24.05";
    home-manager = {
      url = "github:nix-community/home-manager/release-24.05";
      inputs.nixpkgs.follows = "nixpkgs";
    };
    "quoted-name".url = "github:a/b";
  };
  inputs.agenix.url   =   "github:ryantm/agenix";
  inputs.sops = { url = "github:Mic92/sops-nix"; flake = true; };
  outputs = { self, nixpkgs, ... }@inputs: let x = { inputs.nixpkgs.url = "shadow"; }; in {
    nixosConfigurations.host = { system.stateVersion = "24.05"; };
  };
}
]]

  it("rewrites only that input's URL, in each of the usual forms", function()
    local d = tmpdir()
    local f = d .. "/flake.nix"
    fs.write(f, FLAKE)
    local cases = {
      { "nixpkgs", "github:NixOS/nixpkgs/nixos-24.11", "github:NixOS/nixpkgs/nixos-24.05" },
      { "home-manager", "github:nix-community/home-manager/release-24.11",
        "github:nix-community/home-manager/release-24.05" },
      { "agenix", "github:ryantm/agenix/0.15.0", "github:ryantm/agenix" },
      { "sops", "github:Mic92/sops-nix/master", "github:Mic92/sops-nix" },
      { "quoted-name", "github:a/c", "github:a/b" },
    }
    local expect = FLAKE
    for _, c in ipairs(cases) do
      local old = assert(nixos.flake_set_input(f, c[1], c[2]))
      eq(old, c[3], c[1])
      expect = expect:gsub(c[3]:gsub("%p", "%%%0") .. '"', (c[2]:gsub("%%", "%%%%")) .. '"', 1)
      eq(fs.read(f), expect, "only the URL of " .. c[1] .. " changed")
    end
    has(fs.read(f), 'inputs.nixpkgs.url = "not this"')
    has(fs.read(f), 'inputs.nixpkgs.url = "shadow"')
    has(fs.read(f), 'system.stateVersion = "24.05"')
  end)

  it("refuses a missing, ambiguous or computed input and leaves the file alone", function()
    local d = tmpdir()
    local f = d .. "/flake.nix"
    fs.write(f, FLAKE)
    fails("ENOENT", "no input 'nixos-hardware' with a url", nixos.flake_set_input, f, "nixos-hardware", "x")
    fs.write(f, FLAKE .. '\n')
    local twice = FLAKE:gsub('inputs.agenix.url', 'inputs.nixpkgs.url = "github:x/y"; inputs.agenix.url', 1)
    fs.write(f, twice)
    fails("EAMBIGUOUS", "input 'nixpkgs' has a url on line 4 and line 11", nixos.flake_set_input, f, "nixpkgs", "x")
    eq(fs.read(f), twice)
    local computed = FLAKE:gsub('"github:ryantm/agenix"', '"github:${owner}/agenix"', 1)
    fs.write(f, computed)
    fails("EINVAL", "the url of 'agenix' is not a plain string", nixos.flake_set_input, f, "agenix", "x")
    eq(fs.read(f), computed)
    fails("ENOENT", d .. "/missing.nix", nixos.flake_set_input, d .. "/missing.nix", "nixpkgs", "x")
    checkerr("a URL with a quote", nixos.flake_set_input, f, "nixpkgs", 'x"; evil = "')
  end)
end)

describe("nixos.rebuild, rollback and diff", function()
  it("upgrades, and a failure after the switch rolls back generation and flake files", function()
    local dir, env = nix_host()
    local etc = dir .. "/etc-nixos"
    local before = flake_files(etc)
    local p = upgrade(dir)
    local r = hrun_in(env, { p, "--state", dir .. "/state", "-p", "etc=" .. etc, "-p", "sandbox=" .. dir,
      "-p", "fail=true" })
    eq(r.code, 1, r.stdout .. r.stderr)
    has(r.stdout .. r.stderr, "services did not come back")
    eq(current_link(dir), "system-2-link", "back on generation 2")
    ok(fs.exists(dir .. "/profiles/system-3-link"), "generation 3 was made")
    eq(activations(dir), "switch gen2\nswitch gen2\n", "switched to 3 (labelled gen2), then back to 2")
    eq(flake_files(etc), before, "flake.nix and flake.lock back, byte for byte")
    has(exec.run({ "readlink", dir .. "/profiles/system-3-link" }).stdout, "hrun-test-24.11")
  end)

  it("succeeds, and `hrun rollback` undoes it from the journal", function()
    local dir, env = nix_host()
    local etc = dir .. "/etc-nixos"
    local before = flake_files(etc)
    local p = upgrade(dir)
    local r = hrun_in(env, { p, "--state", dir .. "/state", "-p", "etc=" .. etc, "-p", "sandbox=" .. dir })
    eq(r.code, 0, r.stdout .. r.stderr)
    eq(current_link(dir), "system-3-link")
    has(r.stdout, "now on 24.11.20241121.fake (hrun)")
    ok(fs.read(etc .. "/flake.nix"):find("pkgs%-24%.11"), "flake.nix points at 24.11")
    r = hrun_in(env, { "rollback", "--state", dir .. "/state" })
    eq(r.code, 0, r.stdout .. r.stderr)
    eq(current_link(dir), "system-2-link")
    eq(flake_files(etc), before)
  end)

  it("plans a switch with its closure diff and changes nothing", function()
    local dir, env = nix_host()
    local etc = dir .. "/etc-nixos"
    -- the flake already points at 24.11 (as after the inputs step): the plan builds it
    lua_in(env, string.format([[nixos.flake_set_input(%q, "nixpkgs", "path:%s/pkgs-24.11")]], etc .. "/flake.nix", dir))
    local before, gens = flake_files(etc), tree(dir .. "/profiles")
    local p = upgrade(dir)
    local r = hrun_in(env, { "plan", p, "--state", dir .. "/state", "-p", "etc=" .. etc, "-p", "sandbox=" .. dir })
    eq(r.code, 0, r.stdout .. r.stderr)
    has(r.stdout, "nixos.rebuild")
    has(r.stdout, "closure: 4 changed, 1 added, 1 removed")
    has(r.stdout, "~ linux 6.6.30, 6.6.30-modules → 6.6.63, 6.6.63-modules")
    has(r.stdout, "~ openssl 3.0.13 → 3.3.2")
    has(r.stdout, "+ foo 1.0")
    has(r.stdout, "- bar 1.0")
    eq(flake_files(etc), before, "the plan changed no file")
    eq(tree(dir .. "/profiles"), gens, "nor the generations")
    eq(activations(dir), "", "nor activated anything")
    -- the same as JSON events
    r = hrun_in(env, { "plan", p, "--json", "--state", dir .. "/state", "-p", "etc=" .. etc, "-p", "sandbox=" .. dir })
    local found
    for line in r.stdout:gmatch("[^\n]+") do
      local ev = json.decode(line)
      if ev.event == "effect" and ev.op == "nixos.rebuild" then
        found = ev.preview
      end
    end
    ok(found, "a preview in the effect event")
    eq(found.diff.added, { { name = "foo", version = "1.0" } })
    eq(found.diff.removed, { { name = "bar", version = "1.0" } })
    eq(#found.diff.changed, 4)
  end)

  it("shows in a plan that the build fails", function()
    local dir, env = nix_host()
    local etc = dir .. "/etc-nixos"
    fs.write(etc .. "/flake.nix", (fs.read(etc .. "/flake.nix"):gsub("nixpkgs.lib.system", "nixpkgs.lib.nosuchthing")))
    local p = playbook_file(dir, "switch.lua", string.format([[
return playbook { name = "switch",
  phase "p" { step "switch" { run = function() nixos.rebuild("switch", { flake = %q, profile = %q }) end } },
}]], etc .. "#hrun-test", dir .. "/profiles/system"))
    local r = hrun_in(env, { "plan", p, "--state", dir .. "/state" })
    has(r.stdout, "the build fails: nixos.rebuild: nixos-rebuild build exited with code 1")
    has(r.stdout, "nosuchthing")
  end)

  it("reports a failing rebuild with the end of its output, and changes nothing", function()
    local dir, env = nix_host()
    local out = lua_in(env, string.format([[
      print(nixos.rebuild("switch", { flake = %q, profile = %q, stream = false }))
    ]], dir .. "/etc-nixos#no-such-host", dir .. "/profiles/system"))
    has(out, "nil\tnixos.rebuild: nixos-rebuild switch exited with code 1:\n")
    has(out, "no-such-host")
    has(out, "EREBUILD")
    eq(current_link(dir), "system-2-link")
  end)

  it("parses dry-activate's units and runs it in plans (it changes nothing)", function()
    local dir, env = nix_host()
    local out = lua_in(env, string.format([[
      local r = nixos.rebuild("dry-activate", { flake = %q, profile = %q, stream = false })
      print(json.encode(r.units))
    ]], dir .. "/etc-nixos#hrun-test", dir .. "/profiles/system"))
    eq(json.decode(out), { stop = { "bar.service" }, not_stopped = { "dbus.service" },
      restart = { "immich-server.service", "postgresql.service" }, start = { "foo.service" },
      reload = { "nginx.service" } })
    eq(activations(dir), "dry-activate gen2\n")
  end)

  it("undoes `test` by activating the profile's generation again", function()
    local dir, env = nix_host()
    fs.write(dir .. "/etc-nixos/label", "testing")
    local p = playbook_file(dir, "t.lua", string.format([[
return playbook { name = "t",
  phase "p" {
    step "test" { run = function() nixos.rebuild("test", { flake = %q, profile = %q }) end },
    step "fail" { run = function() error("no") end },
  },
}]], dir .. "/etc-nixos#hrun-test", dir .. "/profiles/system"))
    local r = hrun_in(env, { p, "--state", dir .. "/state" })
    eq(r.code, 1, r.stdout .. r.stderr)
    eq(activations(dir), "test testing\ntest gen2\n")
    eq(current_link(dir), "system-2-link", "test never touches the profile")
  end)

  it("rolls back as nixos-rebuild --rollback does, and its inverse switches forward again", function()
    local dir, env = nix_host()
    local P = dir .. "/profiles/system"
    local out = lua_in(env, string.format([[
      local r = nixos.rollback({ profile = %q })
      print(r.generation, r.previous)
      print(nixos.rollback({ profile = %q, to = 9 }))
    ]], P, P))
    eq(out, "1\t2\nnil\tnixos.rollback: generation 9 does not exist in " .. P .. "\tENOENT\n")
    eq(current_link(dir), "system-1-link")
    eq(activations(dir), "switch gen1\n", "activated once: the unknown generation changed nothing")
    -- inside a failing playbook: its inverse goes back to where it was (1 → 2 → 1)
    local p = playbook_file(dir, "rb.lua", string.format([[
return playbook { name = "rb",
  phase "p" {
    step "rollback" { run = function() nixos.rollback({ profile = %q, to = 2 }) end },
    step "fail" { run = function() error("no") end },
  },
}]], P))
    local r = hrun_in(env, { p, "--state", dir .. "/state" })
    eq(r.code, 1, r.stdout .. r.stderr)
    eq(current_link(dir), "system-1-link")
    eq(activations(dir), "switch gen1\nswitch gen2\nswitch gen1\n")
  end)

  it("survives SIGKILL right after the switch: `hrun rollback` switches back", function()
    local dir, env = nix_host()
    local etc = dir .. "/etc-nixos"
    local before = flake_files(etc)
    local p = upgrade(dir)
    -- effects: two flake_set_input, flake_update, then the rebuild (the 4th)
    local r = hrun_in(env, { p, "--state", dir .. "/state", "-p", "etc=" .. etc, "-p", "sandbox=" .. dir },
      { HRUN_TEST_CRASH = "effect-done:4" })
    eq(r.signal, "SIGKILL", r.stdout .. r.stderr)
    eq(current_link(dir), "system-3-link")
    r = hrun_in(env, { "rollback", "--state", dir .. "/state" })
    eq(r.code, 0, r.stdout .. r.stderr)
    eq(current_link(dir), "system-2-link")
    eq(flake_files(etc), before)
  end)

  it("diffs closures of generations and store paths, grouped by package", function()
    local dir, env = nix_host()
    local etc = dir .. "/etc-nixos"
    local out = lua_in(env, string.format([[
      nixos.flake_set_input(%q, "nixpkgs", "path:%s/pkgs-24.11")
      local r = nixos.rebuild("build", { flake = %q, stream = false })
      local new = assert(fs.stat(%q, { follow = false })).target
      local d = nixos.diff(2, new, { profile = %q })
      print(json.encode({ added = d.added, removed = d.removed, changed = d.changed }))
      print(d.paths_added, d.paths_removed, math.type(d.bytes))
      local same = nixos.diff(1, 1, { profile = %q })
      print(#same.added + #same.removed + #same.changed, same.bytes)
      print(pcall(nixos.diff, 1, 7, { profile = %q }))
    ]], etc .. "/flake.nix", dir, etc .. "#hrun-test", env.HOME .. "/result", dir .. "/profiles/system",
      dir .. "/profiles/system", dir .. "/profiles/system"))
    local lines = {}
    for l in out:gmatch("[^\n]+") do
      lines[#lines + 1] = l
    end
    eq(json.decode(lines[1]), {
      added = { { name = "foo", version = "1.0" } },
      removed = { { name = "bar", version = "1.0" } },
      changed = { { name = "initrd-linux", from = "6.6.30", to = "6.6.63" },
        { name = "linux", from = "6.6.30, 6.6.30-modules", to = "6.6.63, 6.6.63-modules" },
        { name = "nixos-system-hrun-test", from = "24.05", to = "24.11" },
        { name = "openssl", from = "3.0.13", to = "3.3.2" } },
    })
    eq(lines[2], "7\t7\tinteger", "postgresql-and-plugins-15.10 differs too, in the same version")
    eq(lines[3], "0\t0")
    has(lines[4], "false\tnixos.diff: generation 7 does not exist in " .. dir .. "/profiles/system")
  end)
end)
