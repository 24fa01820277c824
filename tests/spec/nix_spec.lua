-- The Nix flake (flake.nix, package.nix, nix/module.nix), tested as far as this machine
-- allows: it cannot fetch nixpkgs, so the expressions are parsed, the flake's outputs and
-- the module are evaluated against a small stand-in for the nixpkgs functions they use
-- (tests/fixtures/nixpkgs-standin), and package.nix builds hrun in a real nix build in a
-- private store — with the Debian toolchain in place of nixpkgs' — whose result runs
-- from the store with its Lua library, completions and annotations. docs/install.md says
-- what is and is not tested.

local SOURCE = arg[0]:match("^(.*)/tests/[^/]+$") -- arg[0]: tests/spec.lua
local STANDIN = FIXTURES .. "/nixpkgs-standin"

-- A private nix store (as tests/fixtures/nix-sandbox.sh makes one): the environment.
local function store()
  need("nix-build")
  local d = tmpdir()
  for _, sub in ipairs({ "conf", "home", "tmp", "root" }) do
    fs.mkdir(d .. "/" .. sub)
  end
  fs.write(d .. "/conf/nix.conf", "sandbox = false\nsubstituters =\nbuild-users-group =\n" ..
    "experimental-features = nix-command flakes\n")
  after(function()
    exec.run({ "chmod", "-R", "u+w", d }, { check = false }) -- the store's paths are read-only
  end)
  return d, { NIX_STORE_DIR = d .. "/root/store", NIX_STATE_DIR = d .. "/root/var", NIX_LOG_DIR = d .. "/root/var/log",
    NIX_CONF_DIR = d .. "/conf", NIX_REMOTE = "", HOME = d .. "/home", TMPDIR = d .. "/tmp" }
end

local function nix(env, argv)
  local r = exec.run(argv, { env = env, check = false, timeout = 900 })
  eq(r.code, 0, table.concat(argv, " ") .. ": " .. r.stdout .. r.stderr)
  return r.stdout
end

local function eval_json(env, file, attr, args)
  local argv = { "nix-instantiate", "--eval", "--strict", "--json", file }
  if attr then
    argv[#argv + 1] = "-A"
    argv[#argv + 1] = attr
  end
  for _, a in ipairs(args or {}) do
    argv[#argv + 1] = a
  end
  return json.decode(nix(env, argv))
end

describe("the flake's expressions", function()
  it("parse", function()
    local _, env = store()
    for _, f in ipairs({ "flake.nix", "package.nix", "nix/module.nix" }) do
      nix(env, { "nix-instantiate", "--parse", SOURCE .. "/" .. f })
    end
  end)

  it("give the version CMakeLists.txt gives", function()
    local cmake = fs.read(SOURCE .. "/CMakeLists.txt"):match("project%(hrun VERSION ([%d.]+)")
    eq(fs.read(SOURCE .. "/package.nix"):match('version = "([%d.]+)"'), cmake)
  end)

  it("give packages, an app and an overlay on both systems, all the same hrun", function()
    local _, env = store()
    local outputs = STANDIN .. "/flake-outputs.nix"
    local drv = eval_json(env, outputs, "packages.x86_64-linux.default.drvPath")
    eq(eval_json(env, outputs, "packages.x86_64-linux.hrun.drvPath"), drv)
    has(eval_json(env, outputs, "apps.x86_64-linux.default.program"), "-hrun-0.1.0/bin/hrun")
    eq(eval_json(env, outputs, "apps.x86_64-linux.default.type"), "app")
    ok(eval_json(env, outputs, "packages.aarch64-linux.default.drvPath"), "aarch64-linux too")
    local overlay = nix(env, { "nix-instantiate", "--eval", "--json", "-E", string.format(
      "let f = import %s; s = import %s { }; in (f.overlays.default s s).hrun.drvPath", outputs, STANDIN) })
    eq(json.decode(overlay), drv)
    eq(eval_json(env, outputs, "packages.x86_64-linux.default.name"), "hrun-0.1.0")
  end)
end)

describe("the NixOS module", function()
  local function module(env, settings)
    return eval_json(env, STANDIN .. "/module-eval.nix", nil, { "--arg", "settings", settings })
  end

  it("defaults to hrun's own directories, and does nothing unless enabled", function()
    local _, env = store()
    local m = module(env, "{ }")
    eq(m.defaults.stateDir, "/var/lib/hrun")
    -- the agent's default directory: the same as hrun agent's
    eq(m.defaults.agentDir, require("hrun.agent").DEFAULT_DIR)
    eq(m.defaults.sudoUsers, {})
    eq(m.config, json.null)
  end)

  it("installs the package, makes the state and agent directories, and one sudoers rule", function()
    local _, env = store()
    local m = module(env, '{ enable = true; stateDir = "/srv/hrun"; agentDir = "/srv/hrun/agent"; ' ..
      'sudoUsers = [ "deploy" ]; }')
    eq(m.config.environment.systemPackages, { "pkgs.hrun" })
    -- root's state directory, for root alone
    eq(m.config.environment.extraInit, "if [ \"$(id -u)\" = 0 ]; then export HRUN_STATE_DIR='/srv/hrun'; fi\n")
    eq(m.config.environment.variables, nil)
    eq(m.config.systemd.tmpfiles.rules, { "d /srv/hrun 0700 root root -", "d /srv/hrun/agent 0700 root root -" })
    local rule = m.config.security.sudo.extraRules[1]
    eq(rule.users, { "deploy" })
    eq(rule.commands[1].command, "/run/current-system/sw/bin/hrun agent --dir /srv/hrun/agent")
    eq(rule.commands[1].options, { "NOPASSWD" })
    m = module(env, "{ enable = true; }")
    eq(m.config.environment.extraInit, json.null, "the default state directory needs no variable")
    eq(m.config.security.sudo.extraRules, json.null, "no users, no rule")
  end)
end)

describe("package.nix", function()
  it("builds hrun in a nix build, which runs from the store with its library, completions and annotations", function()
    local d, env = store()
    local out = nix(env, { "nix-build", STANDIN .. "/flake-outputs.nix", "-A", "packages.x86_64-linux.default",
      "-o", d .. "/result" }):gsub("%s+$", "")
    ok(out:find(d .. "/root/store/", 1, true) == 1, "built into the store: " .. out)
    -- what the build made it with is gone: the library is the one beside the binary
    local where = 'print(debug.getinfo(require("hrun.dsl").constructors, "S").source)'
    local r = exec.run({ out .. "/bin/hrun", "-e", where }, { check = false })
    eq(r.code, 0, r.stderr)
    has(r.stdout, out .. "/bin/../share/hrun/lua/hrun/dsl.lua")
    has(exec.run({ out .. "/bin/hrun", "version" }).stdout, "hrun 0.1.0")
    -- a playbook planned with it
    local p = playbook_file(d, "p.lua", [[
return playbook { name = "p", params = { f = "" }, phase "a" { step "s" { run = function(ctx)
  fs.write(ctx.params.f, "x") end } } }]])
    r = exec.run({ out .. "/bin/hrun", "plan", p, "--state", d .. "/state", "-p", "f=" .. d .. "/f", "--no-color" },
      { check = false })
    eq(r.code, 0, r.stdout .. r.stderr)
    has(r.stdout, "would fs.write " .. d .. "/f")
    for _, f in ipairs({ "share/bash-completion/completions/hrun", "share/zsh/vendor-completions/_hrun",
      "share/fish/vendor_completions.d/hrun.fish", "share/hrun/luals/hrun.lua", "share/man/man1/hrun.1",
      "share/hrun/playbooks/demo.lua" }) do
      ok(fs.exists(out .. "/" .. f), f)
    end
  end)
end)
