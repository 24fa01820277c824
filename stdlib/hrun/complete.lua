-- hrun.complete: shell completion for bash, zsh and fish, written from the command
-- line's own tables (cli.lua's commands and options), so that it cannot drift from what
-- hrun accepts; and the candidates only hrun knows (the journal's runs, a playbook's
-- parameters, phases and steps), which the scripts ask `hrun completion --candidates`.
--
-- spec (from cli.lua): {commands = {{name, summary, arg}, …}, flags = {{name, value,
-- help, only = {cmd = true} | nil, complete}, …}}. A command's arg is what its
-- positional words are: "playbook", "run", "path", "command", or a list of words; a
-- flag's complete what its value is: "dir", "file", "param", "phase", "step", "run", or
-- a list of words.

local fs = require "hrun.fs"

local M = {}

-- {======================================================
-- Candidates
-- ======================================================

-- The string methods ("x"):m() a playbook's top level may use while loaded for
-- completion: none that matches patterns (a pattern can take exponential time in C,
-- where no instruction count reaches) or repeats.
local INERT_STRING = { "byte", "char", "format", "len", "lower", "reverse", "sub", "upper" }

-- The names a playbook at path declares — {params = {name = true}, phases = {…}, steps =
-- {…}} — read from its DSL objects as they are made, not validated: loaded with nothing
-- but the DSL's constructors, from a regular file of at most 1 MiB, with a bounded
-- number of instructions, bounded memory and harmless string methods. Completing a word
-- must not run a shared playbook's code (its top level may call fs.write), nor hang, nor
-- read a device or a pipe. nil when it does not load so.
local MAX_SOURCE = 1 << 20
local function inert_names(priv, path)
  local st = fs.stat(path)
  if not st or st.type ~= "file" or st.size > MAX_SOURCE then
    return nil
  end
  local f = io.open(path, "r")
  if not f then
    return nil
  end
  local text = f:read(MAX_SOURCE)
  f:close()
  local dsl = require "hrun.dsl"
  local env = {}
  for name, fn in pairs(dsl.constructors()) do
    env[name] = fn
  end
  local chunk = text and load(text, "@" .. path, "t", env)
  if not chunk then
    return nil
  end
  -- the DSL's objects walked raw (no metamethod of the playbook's runs), as they are
  local function each(t, fn)
    for i = 1, type(t) == "table" and rawlen(t) or 0 do
      fn(rawget(t, i))
    end
  end
  local function walk(pb)
    local names = { params = {}, phases = {}, steps = {} }
    if not dsl.is_playbook(pb) or type(rawget(pb, "body")) ~= "table" then
      return nil
    end
    local params = rawget(pb.body, "params")
    local k = type(params) == "table" and next(params) or nil
    while k ~= nil do
      if type(k) == "string" then
        names.params[k] = true
      end
      k = next(params, k)
    end
    each(pb.body, function(ph)
      if dsl.kind_of(ph) == "phase" and type(rawget(ph, "name")) == "string" then
        names.phases[ph.name] = true
        each(rawget(ph, "body"), function(item)
          if dsl.kind_of(item) == "step" and type(rawget(item, "name")) == "string" then
            names.steps[item.name] = true
            names.steps[ph.name .. "/" .. item.name] = true
          end
        end)
      end
    end)
    return names
  end
  local strings = debug.getmetatable("") -- protected (__metatable) from playbooks
  local methods, inert = strings.__index, {}
  for _, name in ipairs(INERT_STRING) do
    inert[name] = string[name]
  end
  strings.__index = inert
  debug.sethook(function()
    error("too long", 0)
  end, "", 1000000)
  priv.memlimit(64 * 1024 * 1024)
  local ok, names = pcall(function()
    return walk(chunk())
  end)
  priv.memlimit(0)
  debug.sethook()
  strings.__index = methods
  return ok and names or nil
end

local sorted = require("hrun.dsl").sorted_keys

-- Fit for a shell's completion: a name without control characters (one a line).
local function printable(name)
  return not name:find("[%c]")
end

-- candidates(priv, kind, arg, state) → a list of "word" or "word\tdescription": kind
-- "runs" (the journal's, newest first, in the state directory state), "params",
-- "phases" or "steps" (of the playbook at arg).
function M.candidates(priv, kind, arg, state)
  local out = {}
  if kind == "runs" then
    -- read only: completing a word never makes or migrates a journal
    local db = state and state .. "/journal.db"
    local ok, rows = pcall(require("hrun.sqlite").query, db or "",
      "SELECT id, playbook, status FROM runs ORDER BY id DESC LIMIT 50")
    for _, r in ipairs(ok and type(rows) == "table" and rows or {}) do
      out[#out + 1] = string.format("%d\t%s, %s", r.id, tostring(r.playbook):gsub("%c", " "),
        tostring(r.status):gsub("%c", " "))
    end
    return out
  end
  local names = arg and inert_names(priv, arg)
  local set = names and names[kind] or {}
  for _, name in ipairs(sorted(set)) do
    if printable(name) then
      out[#out + 1] = kind == "params" and (name .. "=") or name
    end
  end
  return out
end

-- }======================================================

-- {======================================================
-- The scripts
-- ======================================================

-- s as one shell word, single-quoted.
local function shq(s)
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

-- The options command name accepts (global ones too), sorted.
local function flags_of(spec, name)
  local out = {}
  for _, f in ipairs(spec.flags) do
    if not f.hidden and (not f.only or f.only[name]) then
      out[#out + 1] = f
    end
  end
  return out
end

local function names(list)
  local out = {}
  for i, f in ipairs(list) do
    out[i] = f.name
  end
  return table.concat(out, " ")
end

-- Appends to L a shell function name() that sets var from a case over its $1: cases
-- {{word, value}, …}, default for any other word; indent one level of the script's.
local function case_function(L, name, var, cases, default, indent)
  L[#L + 1] = name .. "() {"
  L[#L + 1] = indent .. "case $1 in"
  for _, c in ipairs(cases) do
    L[#L + 1] = string.format("%s%s%s) %s=%s ;;", indent, indent, c[1], var, c[2])
  end
  L[#L + 1] = string.format("%s%s*) %s=%s ;;", indent, indent, var, default)
  L[#L + 1] = indent .. "esac"
  L[#L + 1] = "}"
end

local function kind_word(k)
  return type(k) == "table" and ("words:" .. table.concat(k, " ")) or (k or "")
end

-- The options that take a value, as " -a --b … " (a word's neighbours are spaces), and
-- the cases of what each value is: {{name, 'kind'}, …}.
local function value_flags(spec)
  local list, kinds = {}, {}
  for _, f in ipairs(spec.flags) do
    if f.value then
      list[#list + 1] = f.name
      kinds[#kinds + 1] = { f.name, shq(kind_word(f.complete)) }
    end
  end
  return " " .. table.concat(list, " ") .. " ", kinds
end

-- The commands a person types (not a playbook's path), as "plan check …".
local function command_words(spec)
  local out = {}
  for _, c in ipairs(spec.commands) do
    if not c.hidden then
      out[#out + 1] = c.name
    end
  end
  return table.concat(out, " ")
end

-- The cases of what each command's positional words are: {{command, 'kind'}, …}.
local function arg_cases(spec)
  local cases = {}
  for _, c in ipairs(spec.commands) do
    cases[#cases + 1] = { c.name, shq(kind_word(c.arg)) }
  end
  return cases
end

local function bash(spec)
  local L = {
    "# bash completion for hrun: written by `hrun completion bash` from hrun's own tables of",
    "# commands and options. Installed as share/bash-completion/completions/hrun.",
    "",
  }
  local flag_cases = {}
  for _, c in ipairs(spec.commands) do
    flag_cases[#flag_cases + 1] = { c.name, shq(names(flags_of(spec, c.name))) }
  end
  local valued, kinds = value_flags(spec)
  L[#L + 1] = "_hrun_commands=" .. shq(command_words(spec))
  L[#L + 1] = "_hrun_value_flags=" .. shq(valued)
  case_function(L, "_hrun_flags", "REPLY", flag_cases, shq(names(flags_of(spec, ""))), "    ")
  case_function(L, "_hrun_arg", "REPLY", arg_cases(spec), "", "    ")
  case_function(L, "_hrun_flag_kind", "REPLY", kinds, "", "    ")
  L[#L + 1] = [==[
# _hrun_complete_kind KIND CUR: fills COMPREPLY with the candidates of KIND
_hrun_complete_kind() {
    local kind=$1 cur=$2 line
    local -a found=()
    case $kind in
    words:*) COMPREPLY=($(compgen -W "${kind#words:}" -- "$cur")) ;;
    dir) compopt -o filenames 2>/dev/null; COMPREPLY=($(compgen -d -- "$cur")) ;;
    file | path) compopt -o filenames 2>/dev/null; COMPREPLY=($(compgen -f -- "$cur")) ;;
    playbook)
        compopt -o filenames 2>/dev/null
        COMPREPLY=($(compgen -f -X '!*.lua' -- "$cur") $(compgen -d -- "$cur")) ;;
    command) COMPREPLY=($(compgen -W "$_hrun_commands modules" -- "$cur")) ;;
    run | param | phase | step)
        local what=${kind}s arg=$_hrun_file
        [ "$kind" = run ] && arg=
        [ "$kind" != run ] && [ -z "$arg" ] && return
        while IFS= read -r line; do
            found+=("${line%%$'\t'*}")
        done < <("${COMP_WORDS[0]}" completion --candidates "$what" ${arg:+"$arg"} \
            ${_hrun_state:+--state "$_hrun_state"} 2>/dev/null)
        # matched here, never through compgen -W (which expands $(…) in a name), and
        # quoted for the line
        for line in "${found[@]}"; do
            [[ $line == "$cur"* ]] && COMPREPLY+=("$(printf '%q' "$line")")
        done
        [ "$kind" = param ] && compopt -o nospace 2>/dev/null ;;
    esac
}

_hrun() {
    local cur=${COMP_WORDS[COMP_CWORD]} prev= cmd= i w REPLY
    _hrun_file= _hrun_state=
    [ "$COMP_CWORD" -gt 0 ] && prev=${COMP_WORDS[COMP_CWORD-1]}
    COMPREPLY=()
    # what is on the line before the word: the command (or a playbook's path), the
    # playbook, the state directory; option values skipped
    for ((i = 1; i < COMP_CWORD; i++)); do
        w=${COMP_WORDS[i]}
        if [[ $_hrun_value_flags == *" $w "* ]]; then
            [ "$w" = --state ] && _hrun_state=${COMP_WORDS[i+1]}
            ((i++))
            continue
        fi
        case $w in
        --state=*) _hrun_state=${w#--state=}; continue ;;
        -*) continue ;;
        esac
        if [ -z "$cmd" ]; then
            case $w in
            *.lua | */*) cmd=playbook; _hrun_file=$w ;;
            *) cmd=$w ;;
            esac
        elif [ -z "$_hrun_file" ] && [[ $w == *.lua ]]; then
            _hrun_file=$w
        fi
    done
    if [[ $_hrun_value_flags == *" $prev "* ]] && [ "$COMP_CWORD" -gt 1 ]; then
        _hrun_flag_kind "$prev"
        _hrun_complete_kind "$REPLY" "$cur"
        return
    fi
    if [[ $cur == -* ]]; then
        _hrun_flags "$cmd"
        COMPREPLY=($(compgen -W "$REPLY" -- "$cur"))
        return
    fi
    if [ -z "$cmd" ]; then
        compopt -o filenames 2>/dev/null
        COMPREPLY=($(compgen -W "$_hrun_commands" -- "$cur") $(compgen -f -X '!*.lua' -- "$cur")
            $(compgen -d -- "$cur"))
        return
    fi
    [ "$cmd" = playbook ] && return # after the playbook: options only
    _hrun_arg "$cmd"
    _hrun_complete_kind "$REPLY" "$cur"
}
complete -F _hrun hrun]==]
  return table.concat(L, "\n") .. "\n"
end

-- zsh's and fish's descriptions: one line, no quotes or colons to escape in a hurry
local function desc(s)
  return (tostring(s or ""):gsub("\n.*", ""):gsub("[%c]", " "))
end

local function zsh(spec)
  local L = {
    "#compdef hrun",
    "# zsh completion for hrun: written by `hrun completion zsh` from hrun's own tables of",
    "# commands and options. Installed as share/zsh/vendor-completions/_hrun.",
    "",
    "_hrun_commands=(",
  }
  for _, c in ipairs(spec.commands) do
    if not c.hidden then
      L[#L + 1] = "    " .. shq(c.name .. ":" .. desc(c.summary):gsub(":", "\\:"))
    end
  end
  L[#L + 1] = ")"
  local function flag_specs(name)
    local out = {}
    for _, f in ipairs(flags_of(spec, name)) do
      out[#out + 1] = shq(f.name:gsub(":", "\\:") .. ":" .. desc(f.help or f.value or ""):gsub(":", "\\:"))
    end
    return "(" .. table.concat(out, " ") .. ")"
  end
  local flag_cases = {}
  for _, c in ipairs(spec.commands) do
    flag_cases[#flag_cases + 1] = { c.name, flag_specs(c.name) }
  end
  local valued, kinds = value_flags(spec)
  L[#L + 1] = "_hrun_value_flags=" .. shq(valued)
  case_function(L, "_hrun_flag_kind", "REPLY", kinds, "", "  ")
  case_function(L, "_hrun_flags", "reply", flag_cases, flag_specs(""), "  ")
  case_function(L, "_hrun_arg", "REPLY", arg_cases(spec), "", "  ")
  L[#L + 1] = [==[
_hrun_kind() {
  local kind=$1 line
  local -a found
  case $kind in
  words:*) compadd -- ${=kind#words:} ;;
  dir) _files -/ ;;
  file | path) _files ;;
  playbook) _files -g '*.lua' ;;
  command) _describe -t commands 'hrun command' _hrun_commands; compadd modules ;;
  run | param | phase | step)
    local what=${kind}s arg=$_hrun_file
    [[ $kind == run ]] && arg=
    [[ $kind != run && -z $arg ]] && return
    local -a extra
    [[ -n $arg ]] && extra=($arg)
    [[ -n $_hrun_state ]] && extra+=(--state $_hrun_state)
    found=("${(@f)$($words[1] completion --candidates $what $extra 2>/dev/null)}")
    found=("${(@)found//:/\\:}")
    found=("${(@)found/$'\t'/:}")
    if [[ $kind == param ]]; then
      compadd -S '' -- "${(@)found%%:*}"
    else
      _describe -t $what $what found
    fi ;;
  esac
}

_hrun() {
  local cmd= w i REPLY
  local -a reply
  _hrun_file= _hrun_state=
  for ((i = 2; i < CURRENT; i++)); do
    w=$words[i]
    if [[ $_hrun_value_flags == *" $w "* ]]; then
      [[ $w == --state ]] && _hrun_state=$words[i+1]
      ((i++))
      continue
    fi
    case $w in
    --state=*) _hrun_state=${w#--state=}; continue ;;
    -*) continue ;;
    esac
    if [[ -z $cmd ]]; then
      case $w in
      *.lua | */*) cmd=playbook; _hrun_file=$w ;;
      *) cmd=$w ;;
      esac
    elif [[ -z $_hrun_file && $w == *.lua ]]; then
      _hrun_file=$w
    fi
  done
  local prev=$words[CURRENT-1] cur=$words[CURRENT]
  if (( CURRENT > 2 )) && [[ $_hrun_value_flags == *" $prev "* ]]; then
    _hrun_flag_kind $prev
    _hrun_kind $REPLY
    return
  fi
  if [[ $cur == -* ]]; then
    _hrun_flags "$cmd"
    _describe -t options 'hrun option' reply
    return
  fi
  if [[ -z $cmd ]]; then
    _describe -t commands 'hrun command' _hrun_commands
    _files -g '*.lua'
    return
  fi
  [[ $cmd == playbook ]] && return
  _hrun_arg $cmd
  _hrun_kind $REPLY
}

_hrun "$@"]==]
  return table.concat(L, "\n") .. "\n"
end

local function fish(spec)
  local L = {
    "# fish completion for hrun: written by `hrun completion fish` from hrun's own tables of",
    "# commands and options. Installed as share/fish/vendor_completions.d/hrun.fish.",
    "",
    [==[
# the command on the line (a playbook's path counts as "playbook"), or nothing yet
function __hrun_command
    set -l words (commandline -opc)
    set -e words[1]
    set -l skip 0
    for w in $words
        if test $skip = 1
            set skip 0
            continue
        end
        if contains -- $w $__hrun_value_flags
            set skip 1
            continue
        end
        switch $w
            case '-*'
                continue
            case '*.lua' '*/*'
                echo playbook
                return
            case '*'
                echo $w
                return
        end
    end
end

# the playbook on the line (its path), for its parameters, phases and steps
function __hrun_file
    for w in (commandline -opc)
        switch $w
            case '*.lua'
                echo $w
                return
        end
    end
end

function __hrun_state
    set -l words (commandline -opc)
    set -l i (contains -i -- --state $words)
    and echo $words[(math $i + 1)]
end

function __hrun_candidates
    set -l arg
    test $argv[1] != runs; and set arg (__hrun_file)
    test $argv[1] != runs; and test -z "$arg"; and return
    set -l state (__hrun_state)
    set -l cmd (commandline -opc)[1]
    if test -n "$state"
        $cmd completion --candidates $argv[1] $arg --state $state 2>/dev/null
    else
        $cmd completion --candidates $argv[1] $arg 2>/dev/null
    end
end

function __hrun_is
    set -l c (__hrun_command)
    test "$c" = $argv[1]
end

function __hrun_none
    set -l c (__hrun_command)
    test -z "$c"
end
]==],
  }
  local valued = value_flags(spec)
  L[#L + 1] = "set -g __hrun_value_flags " .. valued:match("^ (.*) $"):gsub("%S+", shq)
  L[#L + 1] = "complete -c hrun -f"
  for _, c in ipairs(spec.commands) do
    if not c.hidden then
      L[#L + 1] = string.format("complete -c hrun -n __hrun_none -a %s -d %s", shq(c.name), shq(desc(c.summary)))
    end
  end
  L[#L + 1] = "complete -c hrun -n __hrun_none -F -a '(__fish_complete_suffix .lua)'"
  local ARGS = {
    playbook = "-F -a '(__fish_complete_suffix .lua)'", run = "-a '(__hrun_candidates runs)'",
    path = "-F", file = "-F", command = "-a " .. shq(command_words(spec) .. " modules"),
  }
  for _, c in ipairs(spec.commands) do
    local a = type(c.arg) == "table" and ("-a " .. shq(table.concat(c.arg, " "))) or ARGS[c.arg]
    if a and c.name ~= "playbook" then
      L[#L + 1] = string.format("complete -c hrun -n '__hrun_is %s' %s", c.name, a)
    end
  end
  local VALUES = {
    dir = "-x -a '(__fish_complete_directories)'", file = "-r -F", path = "-r -F",
    param = "-x -a '(__hrun_candidates params)'", phase = "-x -a '(__hrun_candidates phases)'",
    step = "-x -a '(__hrun_candidates steps)'", run = "-x -a '(__hrun_candidates runs)'",
  }
  for _, f in ipairs(spec.flags) do
    if not f.hidden then
      local opt = f.name:match("^%-%-(.+)$")
      local how = opt and ("-l " .. shq(opt)) or ("-o " .. shq(f.name:sub(2)))
      if #f.name == 2 then
        how = "-s " .. shq(f.name:sub(2))
      end
      local value = ""
      if f.value then
        value = type(f.complete) == "table" and ("-x -a " .. shq(table.concat(f.complete, " ")))
          or VALUES[f.complete] or "-x"
      end
      local cond = ""
      if f.only then
        local cs = {}
        for _, name in ipairs(sorted(f.only)) do
          cs[#cs + 1] = "__hrun_is " .. name
        end
        cond = "-n " .. shq(table.concat(cs, "; or ")) .. " "
      end
      L[#L + 1] = string.format("complete -c hrun %s%s %s -d %s", cond, how, value,
        shq(desc(f.help or f.value or "")))
    end
  end
  return table.concat(L, "\n") .. "\n"
end

M.shells = { bash = bash, zsh = zsh, fish = fish }

-- script(shell, spec) → the completion script for shell, or nil, why
function M.script(shell, spec)
  local make = M.shells[shell]
  if not make then
    return nil, string.format("no completion for '%s': bash, zsh or fish", tostring(shell))
  end
  return make(spec)
end

-- }======================================================

return M
