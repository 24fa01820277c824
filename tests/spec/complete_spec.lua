-- Shell completion (hrun completion bash|zsh|fish, stdlib/hrun/complete.lua) driven in
-- each shell, and the editor annotations (hrun help --luals, stdlib/hrun/luals.lua)
-- checked against the registry and the DSL's own tables.

local HRUN = os.getenv("HRUN_BIN") or "hrun"
local bindir = HRUN:match("^(.*)/[^/]*$") or "."

local function shq(s)
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

-- A directory with a playbook and a journal with one run in it.
local function world()
  local d = tmpdir()
  playbook_file(d, "deploy.lua", [[
return playbook { name = "deploy", params = { data = "", release = "24.11" },
  phase "prepare" {
    step "backup" { run = function(ctx) fs.write(ctx.params.data .. "/f", "x") end },
  },
  phase "switch" {
    step "rebuild" { run = function() end },
  } }]])
  fs.mkdir(d .. "/data")
  eq(hrun_cmd({ d .. "/deploy.lua", "--state", d .. "/state", "-p", "data=" .. d .. "/data" }).code, 0)
  return d
end

local function sorted_words(text)
  local out = {}
  for w in text:gmatch("%S+") do
    out[#out + 1] = w
  end
  table.sort(out)
  return table.concat(out, " ")
end

local function script(shell, d)
  local path = d .. "/hrun." .. shell
  fs.write(path, hrun_cmd({ "completion", shell }).stdout)
  return path
end

-- bash: the completion function called as bash calls it (COMP_WORDS, COMP_CWORD)
local function bash(d, line)
  local path = script("bash", d)
  local r = exec.run({ "bash", "-c", string.format([[
    cd %s && PATH=%s:$PATH && . %s
    read -ra COMP_WORDS <<< %s
    case %s in *" ") COMP_WORDS+=("");; esac
    COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); COMPREPLY=()
    _hrun
    printf '%%s\n' "${COMPREPLY[@]}"]], shq(d), shq(bindir), shq(path), shq(line), shq(line)) },
    { check = false })
  eq(r.code, 0, r.stderr)
  return sorted_words(r.stdout)
end

local function fish(d, line)
  local path = script("fish", d)
  local r = exec.run({ "fish", "--no-config", "-c", string.format("cd %s; set PATH %s $PATH; source %s; complete -C %s",
    shq(d), shq(bindir), shq(path), shq(line)) }, { check = false })
  eq(r.code, 0, r.stderr)
  local words = {}
  for l in r.stdout:gmatch("[^\n]+") do
    words[#words + 1] = l:match("^[^\t]*")
  end
  return sorted_words(table.concat(words, " "))
end

-- zsh: the completion function run with zsh's completion builtins stood in for (compadd,
-- _describe, _files print what they are given; zsh itself would then match the prefix)
local function zsh(d, line)
  local path = script("zsh", d)
  local r = exec.run({ "zsh", "-f", "-c", string.format([==[
    cd %s; PATH=%s:$PATH
    compadd() { local a; for a in "$@"; do [[ $a == -* || -z $a ]] || print -r -- "$a"; done }
    _describe() { local -a items; items=("${(@P)4}"); print -rl -- "${(@)items%%%%:*}" }
    _files() { print -r -- "FILES$*" }
    words=(${(z)1}); [[ $1 == *" " ]] && words+=("")
    CURRENT=$#words
    source %s]==], shq(d), shq(bindir), shq(path)), "zsh", line }, { check = false })
  eq(r.code, 0, r.stderr)
  return sorted_words(r.stdout)
end

describe("completion in bash", function()
  it("completes commands, options by command, values by kind, runs, parameters, phases and steps", function()
    need("bash")
    local d = world()
    eq(bash(d, "hrun ro"), "rollback")
    eq(bash(d, "hrun de"), "deploy.lua")
    has(bash(d, "hrun rollback --"), "--force")
    ok(not bash(d, "hrun rollback --"):find("--tags", 1, true), "--tags is not rollback's")
    eq(bash(d, "hrun deploy.lua --fr"), "--from")
    eq(bash(d, "hrun rollback --state state "), "1")
    eq(bash(d, "hrun deploy.lua -p "), "data= release=")
    eq(bash(d, "hrun plan deploy.lua --only "), "prepare switch")
    eq(bash(d, "hrun plan deploy.lua --from re"), "rebuild")
    eq(bash(d, "hrun hash -a "), "blake2b sha256 xxh128")
    eq(bash(d, "hrun completion "), "bash fish zsh")
    has(bash(d, "hrun help "), "modules")
  end)

  it("loads through bash-completion's own loader, from where the packages install it", function()
    local loader = "/usr/share/bash-completion/bash_completion"
    ok(fs.exists(loader), loader .. ": the bash-completion package (scripts/install-deps.sh) is not installed")
    local d = world()
    local dir = d .. "/share/bash-completion/completions"
    fs.mkdir(dir, { parents = true })
    fs.write(dir .. "/hrun", hrun_cmd({ "completion", "bash" }).stdout)
    local r = exec.run({ "bash", "-c", string.format([[
      cd %s && PATH=%s:$PATH && export XDG_DATA_DIRS=%s
      . %s
      __load_completion hrun || exit 9
      COMP_WORDS=(hrun rollback --state state ""); COMP_CWORD=4; COMPREPLY=()
      $(complete -p hrun | sed 's/.*-F \([^ ]*\) .*/\1/') hrun "" state
      printf '%%s\n' "${COMPREPLY[@]}"]], shq(d), shq(bindir), shq(d .. "/share"), shq(loader)) }, { check = false })
    eq(r.code, 0, r.stdout .. r.stderr)
    eq(sorted_words(r.stdout), "1")
  end)

  it("never runs a playbook's code to complete its parameters", function()
    local d = world()
    playbook_file(d, "hostile.lua", [[
fs.write("]] .. d .. [[/pwned", "yes")
while true do end]])
    playbook_file(d, "big.lua", [[
local s = ("x"):rep(1 << 40)
return playbook { name = "big", params = { a = "" }, phase "p" { step "s" { run = function() end } } }]])
    playbook_file(d, "pattern.lua", [[
local slow = ("a"):rep(40):match(("a*"):rep(40) .. "b")
return playbook { name = "slow", params = { a = "" }, phase "p" { step "s" { run = function() end } } }]])
    playbook_file(d, "plain.lua", [[
local base = ("/srv/%s"):format("data"):upper():lower()
return playbook { name = "plain", params = { dir = base, n = #base },
  phase "p" { step "s" { run = function() end } } }]])
    eq(bash(d, "hrun hostile.lua -p "), "")
    eq(bash(d, "hrun big.lua -p "), "")
    local t0 = sys.clock()
    eq(bash(d, "hrun pattern.lua -p "), "")
    ok(sys.clock() - t0 < 5, "a pattern that would take ages is not run")
    eq(bash(d, "hrun plain.lua -p "), "dir= n=", "a top level of plain values and string methods loads")
    eq(fs.exists(d .. "/pwned"), false)
  end)

  it("inserts a name as a word, never expanding it: a step named $(…) runs nothing", function()
    local d = world()
    playbook_file(d, "names.lua", string.format([[
return playbook { name = "n", params = { ["$(touch %s/pwned)"] = "" },
  phase "p" {
    step "$(touch %s/pwned)" { run = function() end },
    step "two words" { run = function() end },
    step "*" { run = function() end },
  } }]], d, d))
    has(bash(d, "hrun names.lua --from "), "two\\ words")
    has(bash(d, "hrun names.lua --from "), "\\*")
    bash(d, "hrun names.lua -p ")
    fish(d, "hrun names.lua --from ")
    zsh(d, "hrun names.lua --from ")
    eq(fs.exists(d .. "/pwned"), false)
  end)

  it("reads no pipe, device or huge file as a playbook, and walks a heavy one quickly", function()
    local d = world()
    exec.run({ "mkfifo", d .. "/fifo.lua" })
    exec.run({ "ln", "-s", "/dev/zero", d .. "/zero.lua" })
    fs.write(d .. "/huge.lua", "-- " .. string.rep("x", 2 << 20) .. "\nreturn playbook { params = { a = 1 } }")
    local fields = {}
    for i = 1, 20000 do
      fields[#fields + 1] = string.format("f%d = function() end", i)
    end
    playbook_file(d, "heavy.lua", "return playbook { name = 'h', params = { a = '' }, phase 'p' { step 's' { " ..
      table.concat(fields, ", ") .. " } } }")
    local t0 = sys.clock()
    for _, name in ipairs({ "fifo.lua", "zero.lua", "huge.lua" }) do
      eq(bash(d, "hrun " .. name .. " -p "), "", name)
    end
    eq(bash(d, "hrun heavy.lua -p "), "a=")
    ok(sys.clock() - t0 < 20, "no wait on a reader, a device or a validation")
  end)

  it("reads the journal without writing it: no state directory is made, none migrated", function()
    local d = world()
    eq(bash(d, "hrun rollback --state nowhere "), "")
    eq(fs.exists(d .. "/nowhere"), false)
  end)
end)

describe("completion in fish", function()
  it("completes commands, options, runs and parameters", function()
    need("fish")
    local d = world()
    eq(fish(d, "hrun ro"), "rollback")
    eq(fish(d, "hrun deploy.lua --fr"), "--from")
    eq(fish(d, "hrun rollback --state state "), "1")
    eq(fish(d, "hrun deploy.lua -p "), "data= release=")
    eq(fish(d, "hrun plan deploy.lua --only "), "prepare switch")
  end)
end)

describe("completion in zsh", function()
  it("offers commands, options, runs and parameters", function()
    need("zsh")
    local d = world()
    has(zsh(d, "hrun "), "rollback")
    has(zsh(d, "hrun "), "*.lua FILES-g")
    has(zsh(d, "hrun rollback -"), "--force")
    ok(not zsh(d, "hrun rollback -"):find("--tags", 1, true), "--tags is not rollback's")
    eq(zsh(d, "hrun rollback --state state "), "1")
    eq(zsh(d, "hrun deploy.lua -p "), "data= release=")
    eq(zsh(d, "hrun plan deploy.lua --only "), "prepare switch")
  end)
end)

describe("hrun completion", function()
  it("refuses a shell it has no script for, naming the ones it has", function()
    local r = hrun_cmd({ "completion", "tcsh" })
    eq(r.code, 3)
    has(r.stderr, "bash, zsh or fish")
  end)

  it("names every option of every command it completes: the scripts come from the same table", function()
    local help = hrun_cmd({ "help", "rollback" }).stdout
    local text = hrun_cmd({ "completion", "bash" }).stdout
    for flag in help:gmatch("%[(%-%-[%w-]+)") do
      has(text, flag)
    end
  end)
end)

describe("hrun help --luals", function()
  local text
  local function annotations()
    text = text or hrun_cmd({ "help", "--luals" }).stdout
    return text
  end

  it("is a Lua file of ---@meta annotations", function()
    local t = annotations()
    ok(t:find("^%-%-%-@meta"), "starts with ---@meta")
    ok(load(t, "=luals", "t", {}), "parses as Lua")
  end)

  it("annotates every registered function, with its one line", function()
    local t = annotations()
    local missing = {}
    for line in hrun_cmd({ "help", "modules", "--json" }).stdout:gmatch("[^\n]+") do
      local name = json.decode(line).name
      if not name:match("%._") and not t:find("\nfunction " .. name:gsub("%.", "%%.") .. "%(") then
        missing[#missing + 1] = name
      end
    end
    eq(missing, {}, "registered functions without an annotation")
    has(t, "--- the file's contents\n---@param path string\n---@return any\nfunction fs.read(path) end")
  end)

  it("annotates the DSL, its option tables from the DSL's own fields, and ctx", function()
    local t = annotations()
    for _, name in ipairs({ "playbook", "phase", "step", "check", "handler", "required" }) do
      has(t, "\nfunction " .. name .. "(")
    end
    for kind, class in pairs({ playbook = "Playbook", phase = "Phase", step = "Step", handler = "Handler" }) do
      local body = t:match("%-%-%-@class hrun%." .. class .. "\n(.-)\n\n")
      ok(body, "a class for " .. kind)
      for field in pairs(require("hrun.dsl").fields[kind]) do
        has(body, "---@field " .. field, kind .. "." .. field)
      end
    end
    has(t, "---@field run fun(ctx: hrun.Ctx): any")
    has(t, "---@field params table")
    has(t, "---@return hrun.Repo\nfunction git.open(")
    has(t, "function Repo:commit(")
  end)
end)
