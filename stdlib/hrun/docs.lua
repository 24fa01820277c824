-- hrun.docs: one line on everything a playbook calls — every public function of every
-- module it sees, the methods of git.open's repository, the DSL and ctx — with its
-- signature as people write it. The REPL's help() shows it; editor annotations are made
-- from it. docs/reference.md and docs/playbooks.md say it in full and are the truth: an
-- entry here sums one of theirs up. tests/spec/docs_spec.lua fails when a module has a
-- function this table lacks, or this table names one it does not have.
--
-- sections: a list of {name, what, doc, ref, entries}; what is "module" (a global
-- table of functions), "methods" (an object's: repo), "dsl" or "ctx"; ref the part of
-- the docs that says more; entries a list of {name, sig, doc}: name as it is looked up
-- in its table (`write`), sig as it is called (`fs.write(path, data, {mode})`), doc one
-- line (under 90 characters) on what it does or returns.

local M = {}

local function section(name, what, doc, ref, list)
  local entries = {}
  for i, e in ipairs(list) do
    entries[i] = { name = e[1], sig = e[2], doc = e[3] }
  end
  return { name = name, what = what, doc = doc, ref = ref, entries = entries }
end

M.sections = {
  section("fs", "module", "files and directories: read, write atomically, copy, rename, remove",
    "docs/reference.md#fs", {
      { "read", "fs.read(path)", "the file's contents" },
      { "exists", "fs.exists(path)", "whether path exists (a dangling link does not); nil, msg, code if unknowable" },
      { "stat", "fs.stat(path, {follow=true})", "{type, size, mode, uid, gid, mtime, mtime_ns, target, …} of path" },
      { "statfs", "fs.statfs(path)", "{total, free, available, files, …} of path's filesystem, in bytes" },
      { "list", "fs.list(dir)", "the names in dir, sorted bytewise, without . and .." },
      { "glob", "fs.glob(pattern)", "the paths matching a glob ({a,b} braces too), sorted; {} when none do" },
      { "write", "fs.write(path, data, {mode})", "write a file atomically (temporary, fsync, rename); returns path" },
      { "mkdir", "fs.mkdir(path, {parents, mode})", "make a directory (parents: as mkdir -p); returns path" },
      { "remove", "fs.remove(path, {recursive, force})",
        "remove a file, link or tree, never crossing into another filesystem; returns path" },
      { "copy", "fs.copy(src, dst, {recursive, reflink})",
        "copy a file or a tree with modes, owners, times; returns dst" },
      { "sync", "fs.sync(src, dst, {from, delete, exclude, checksum})",
        "make dst a copy of the tree src with rsync; from: the host src is on" },
      { "rename", "fs.rename(src, dst, {replace=true})",
        "rename within a filesystem (replace=false: never over dst); returns dst" },
      { "edit", "fs.edit(path, edits)", "ensure lines or a marked block in a file (lineinfile/blockinfile)" },
      { "template", "fs.template(src, dst, vars, {mode})", "render a logic-less Mustache template to dst" },
    }),
  section("exec", "module", "programs, without a shell (exec.sh is the one way to one)", "docs/reference.md#exec", {
    { "run", "exec.run(argv, {cwd, env, stdin, timeout, check, stream, undo, …})",
      "run a program: {ok, code, stdout, stderr, seconds, …}; raises unless check=false" },
    { "sh", "exec.sh(command, opts)", "run /bin/sh -c command, with exec.run's options and result" },
  }),
  section("json", "module", "JSON: integers kept, keys sorted, null as json.null", "docs/reference.md#json", {
    { "encode", "json.encode(value, {indent=0, sort_keys=true})",
      "the JSON text; raises naming what cannot be encoded" },
    { "decode", "json.decode(text)", "the value, or nil, \"json.decode: line L column C: why\", \"EJSON\"" },
    { "array", "json.array([t])", "t, marked to encode as an array ([] when empty)" },
    { "object", "json.object([t])", "t, marked to encode as an object ({} when empty)" },
    { "null", "json.null", "the value of JSON's null (a value, not a function)" },
  }),
  section("sys", "module", "the host: name, time, clocks, environment, sleep", "docs/reference.md#sys", {
    { "hostname", "sys.hostname()", "the host name" },
    { "is_root", "sys.is_root()", "whether the effective user is root" },
    { "sleep", "sys.sleep(seconds)", "true after the time; an interrupt ends it with the error 'interrupted'" },
    { "now", "sys.now()", "wall-clock seconds since the epoch, with a fraction" },
    { "clock", "sys.clock()", "seconds on a monotonic clock, for durations" },
    { "env", "sys.env([name])", "an environment variable's value or nil; without name, all of them" },
  }),
  section("btrfs", "module", "subvolumes and snapshots (libbtrfsutil): create, snapshot, restore, prune",
    "docs/reference.md#btrfs", {
      { "is_subvolume", "btrfs.is_subvolume(path)", "whether path is a subvolume (false off btrfs)" },
      { "info", "btrfs.info(path)", "{id, uuid, parent_uuid, generation, otime, readonly, path, …} of a subvolume" },
      { "list", "btrfs.list(dir)", "every subvolume below dir, sorted: {{id, path, rel, uuid, readonly, …}, …}" },
      { "sync", "btrfs.sync(path)", "commit the filesystem's transaction" },
      { "create", "btrfs.create(path)", "make a subvolume; returns path (undone by deleting it)" },
      { "snapshot", "btrfs.snapshot(src, dst, {readonly, recursive})",
        "snapshot src at dst; returns dst (undone by deleting it)" },
      { "delete", "btrfs.delete(path, {recursive})",
        "delete a subvolume (cannot be undone: the step needs undo or irreversible)" },
      { "set_readonly", "btrfs.set_readonly(path, bool)", "set a subvolume's read-only flag; returns path" },
      { "restore", "btrfs.restore(snapshot, target)",
        "a writable copy of snapshot at target, the old one set aside; returns its path" },
      { "prune", "btrfs.prune(dir, {keep_last, keep_daily, …, pattern})",
        "delete the snapshots no keep_* rule keeps: {kept, deleted, protected}" },
      { "receive", "btrfs.receive(snapshot, dir, {from, parent})",
        "btrfs send | btrfs receive into dir; from: the host it is on; its info" },
      { "scrub", "btrfs.scrub(path)", "btrfs scrub, its summary: {ok, corrected, uncorrectable, errors, …}" },
    }),
  section("hash", "module", "file digests and tree manifests (xxh128, sha256, blake2b), hashed in parallel",
    "docs/reference.md#hash", {
      { "file", "hash.file(path, {algo})", "the hex digest of a file (xxh128 unless algo says sha256 or blake2b)" },
      { "tree", "hash.tree(root, {algo, threads, exclude, save, resume, quick, …})",
        "a manifest of every entry under root, kept in the journal's database" },
      { "verify", "hash.verify(manifest, [root,] {quick, threads, progress})",
        "the tree against its manifest: {ok, changed, missing, added, meta, errors}" },
      { "compare", "hash.compare(m1, m2)", "what manifest m2 says against m1, as verify's result" },
      { "import", "hash.import(file, {format, root, name})",
        "a manifest of a sha256sum, b2sum or xxhsum file's lines" },
      { "manifests", "hash.manifests()", "the named manifests, newest first" },
      { "export", "hash.export(manifest, file, {format})",
        "write a manifest as checksum lines or hrun's JSON; returns file" },
    }),
  section("git", "module", "git repositories through libgit2; git.open(dir) gives an object (help(\"repo\"))",
    "docs/reference.md#git", {
      { "open", "git.open(dir)", "the repository dir is in: {path, gitdir, bare} with git's functions as methods" },
      { "head", "git.head(dir)", "{commit, branch, detached, unborn, summary} of HEAD" },
      { "status", "git.status(dir, {untracked=true, ignored})", "{clean, files = {{path, index, worktree}, …}}" },
      { "log", "git.log(dir, n=20, {from=\"HEAD\", to})",
        "{{id, summary, message, author, email, time}, …}, newest first" },
      { "tags", "git.tags(dir, pattern=\"*\")", "{{name, commit, annotated, message}, …} by name" },
      { "diff", "git.diff(dir, from, to=\"HEAD\")", "{files = {{path, status}, …}, patch} between two revisions" },
      { "init", "git.init(dir, {bare, branch=\"main\"})",
        "make a repository; returns it (undone by removing what it made)" },
      { "clone", "git.clone(url, dir, {ref, bare, progress})",
        "clone url into dir; returns the repository (undone by removing it)" },
      { "fetch", "git.fetch(dir, {remote=\"origin\", progress})", "fetch from a remote; returns true" },
      { "commit", "git.commit(dir, message, {paths | all, allow_empty})",
        "stage paths (or all) and commit; returns the commit id" },
      { "tag", "git.tag(dir, name, {message, target=\"HEAD\", force})",
        "make a tag (annotated with a message); returns its id" },
      { "delete_tag", "git.delete_tag(dir, name)", "delete a tag; returns true (undone by making it again)" },
      { "checkout_paths", "git.checkout_paths(dir, rev, paths)",
        "paths as rev has them, in work tree and index; returns true" },
      { "checkout", "git.checkout(dir, rev)", "check out rev, HEAD detached there; returns the commit id" },
    }),
  section("nixos", "module", "NixOS generations, closures, nixos-rebuild and flake inputs", "docs/reference.md#nixos", {
    { "generations", "nixos.generations({profile})",
      "the profile's generations, oldest first: {{number, date, current, …}, …}" },
    { "current", "nixos.current({profile})", "the current generation: {number, path, date, version, kernel, …}" },
    { "needs_reboot", "nixos.needs_reboot({booted, current})",
      "needs, what differs from the booted system (kernel, initrd, …)" },
    { "diff", "nixos.diff(a, b, {profile, sizes})", "two closures by package: {added, removed, changed, bytes, …}" },
    { "flake_check", "nixos.flake_check(dir, {stream})", "nix flake check: {ok, stdout, stderr, seconds}" },
    { "rebuild", "nixos.rebuild(action, {flake, target_host, extra_args, stream, …})",
      "nixos-rebuild ACTION: {generation, previous, units, …} (switch: undone by switching back)" },
    { "rollback", "nixos.rollback({profile, to, action})",
      "switch to the generation before (or to): {generation, previous}" },
    { "flake_set_input", "nixos.flake_set_input(flake_nix, input, url)",
      "set one input's URL in flake.nix; returns the URL it replaced" },
    { "flake_update", "nixos.flake_update(dir, {inputs, stream})",
      "update flake.lock (every input, or those named); returns true" },
  }),
  section("http", "module", "HTTP(S) through libcurl: a status is an answer, not an error", "docs/reference.md#http", {
    { "request", "http.request(url, {method, headers, body, json, timeout, …})",
      "a request (GET, HEAD, OPTIONS: a read): {status, headers, body, json, url, …}" },
    { "get", "http.get(url, opts)", "a GET: {status, headers, body, json, url, seconds}" },
    { "head", "http.head(url, opts)", "a HEAD: {status, headers, url, seconds}" },
    { "post", "http.post(url, body, opts)",
      "a POST of a string (or a table, as JSON): {status, headers, body, json, …}" },
    { "wait", "http.wait(url, {status, match, timeout=60, interval=1})",
      "ask until the answer has status (and matches): that answer, with attempts" },
  }),
  section("service", "module", "systemd units over D-Bus: status, start, stop, restart", "docs/reference.md#service", {
    { "status", "service.status(unit)", "{unit, description, load, active, sub, since, main_pid, restarts, result}" },
    { "failed", "service.failed()", "the failed units: {{unit, description, load, active, sub}, …} by name" },
    { "list", "service.list(pattern)", "the loaded units whose names match a glob, as failed() lists them" },
    { "is_enabled", "service.is_enabled(unit)",
      "enabled, state (\"enabled\", \"disabled\", \"static\", \"masked\", …)" },
    { "start", "service.start(unit, {wait=true, timeout=90, mode=\"replace\"})",
      "start a unit, wait for its job: its status (undone by stopping it)" },
    { "stop", "service.stop(unit, opts)", "stop a unit, wait for its job: its status (undone by starting it)" },
    { "restart", "service.restart(unit, opts)", "restart a unit, wait for its job: its status (cannot be undone)" },
    { "reload", "service.reload(unit, opts)", "reload a unit, wait for its job: its status (cannot be undone)" },
  }),
  section("podman", "module", "podman containers, through podman's JSON output", "docs/reference.md#podman", {
    { "ps", "podman.ps({all})", "the running containers (all: every one): {{id, name, image, state, …}, …}" },
    { "inspect", "podman.inspect(name)", "{id, name, image, status, running, exit_code, health, labels, env, raw, …}" },
    { "logs", "podman.logs(name, {tail, since})", "stdout, stderr of a container" },
    { "start", "podman.start(name)", "start a container: it as inspect gives it (undone by stopping it)" },
    { "stop", "podman.stop(name, {timeout=10})", "stop a container: it as inspect gives it (undone by starting it)" },
    { "restart", "podman.restart(name, {timeout=10})",
      "restart a container: it as inspect gives it (cannot be undone)" },
  }),
  section("sqlite", "module", "applications' SQLite databases: online backups, read-only queries",
    "docs/reference.md#sqlite", {
      { "backup", "sqlite.backup(src, dst)",
        "a consistent copy of a live database at dst: {file, bytes, pages, seconds}" },
      { "query", "sqlite.query(file, sql, {values})", "the rows of one read-only statement: {{column = value, …}, …}" },
    }),
  section("secrets", "module", "secrets: read from credentials, shown as <secret> everywhere",
    "docs/reference.md#secrets", {
      { "read", "secrets.read(path | name, {trim=true})",
        "a secret from a file, systemd's credentials or agenix; shows as <secret>" },
      { "is", "secrets.is(v)", "whether v is a secret" },
    }),
  section("journal", "module", "past runs, read from the state directory's journal", "docs/journal.md", {
    { "runs", "journal.runs([n])", "the latest n runs (20), newest first" },
    { "run", "journal.run(id)", "one run in full (phases, steps, effects, events), or nil" },
  }),
  section("checks", "module", "ready-made checks (Lua): each returns ok, message",
    "docs/reference.md#pg-and-checks-lua", {
      { "cgroup_v2", "checks.cgroup_v2([root])", "ok, message: the unified cgroup hierarchy is mounted at root" },
      { "no_failed_units", "checks.no_failed_units({except = {globs}})",
        "ok, message: no systemd unit failed (but those except names)" },
      { "free_space", "checks.free_space(path, {bytes = N} | {percent = P})",
        "ok, message: path's filesystem has that much free" },
      { "mounted", "checks.mounted(path, {fstype, source})",
        "ok, message, the mount: path is a mount point (of fstype, from source)" },
      { "mounts", "checks.mounts()", "the mount table: {{source, target, fstype, options}, …}" },
    }),
  section("pg", "module", "PostgreSQL (Lua, on psql and pg_dump): dumps with checks, restores, queries",
    "docs/reference.md#pg-and-checks-lua", {
      { "dumpall", "pg.dumpall(file, {host, port, user, bin, timeout})",
        "pg_dumpall into a new file (0600): {file, bytes, sha256, seconds}" },
      { "dump", "pg.dump(database, file, opts)",
        "one database as SQL that creates it, into a new file: {file, bytes, sha256, …}" },
      { "exec", "pg.exec(sql, {database=\"postgres\", …})",
        "run one SQL statement with psql (a write, not undone): what psql printed" },
      { "query", "pg.query(sql, {database, …})", "the rows of a query that changes nothing, each a list of strings" },
      { "restore", "pg.restore(file, {sha256, database, creates, …})",
        "check the sum, then psql -f file: {errors, stderr, seconds}" },
      { "version", "pg.version(opts)", "the server's version string and its major number" },
    }),
  section("migrate", "module", "what the phases of a migration to NixOS repeat (Lua, on the journaled modules)",
    "docs/reference.md#migrate-lua", {
      { "snapshot", "migrate.snapshot(ctx, mount, subvolumes, {dir, label})",
        "a read-only snapshot of each subvolume: {sub = snapshot}" },
      { "reload_proxy", "migrate.reload_proxy(ctx)",
        "the phases' handler: service.reload of proxy.unit, unless it is \"\"" },
      { "stamp", "migrate.stamp()", "a UTC time for names, to the microsecond (btrfs.prune reads it back)" },
      { "restore_changed", "migrate.restore_changed(ctx, mount)",
        "for undo: each subvolume written since its snapshot gets it back" },
      { "manifests", "migrate.manifests(ctx, snapshots, {algo, prefix, threads})",
        "hash.tree of each snapshot: {sub = manifest name}" },
      { "verify", "migrate.verify(mount, manifests, {quick})",
        "ok, message, {sub = result}: each subvolume against its manifest" },
      { "deploy", "migrate.deploy(ctx, {flake, host, ref, profile})",
        "git.checkout(ref), then nixos.rebuild(\"switch\"): the generation" },
      { "start", "migrate.start(ctx, services)",
        "start each service in order (undone by stopping), its URL waited for before the next" },
      { "healthy", "migrate.healthy(svc)", "ok, message: the unit is active and its URL (if any) answers" },
      { "wait_healthy", "migrate.wait_healthy(svc, timeout)",
        "wait until a service is healthy; raises at once when its unit fails" },
      { "check_services", "migrate.check_services(services)", "ok, message: every service healthy" },
      { "check_subvolumes", "migrate.check_subvolumes(mount, subvolumes)", "ok, message: each is a btrfs subvolume" },
      { "check_moves", "migrate.check_moves(moves)",
        "ok, message: the moves' fields and types (a mistake names the field)" },
      { "check_sources", "migrate.check_sources(old, moves)",
        "ok, message: the old data is there and the new place free" },
      { "check_old", "migrate.check_old(moves)", "ok, message: the old URLs answer" },
      { "check_public", "migrate.check_public(moves)", "ok, message: the public URLs answer" },
      { "check_offsite", "migrate.check_offsite({unit, max_age})",
        "ok, message: the offsite backup's last run succeeded, recently" },
      { "check_committed", "migrate.check_committed({flake})", "ok, message: the configuration is committed" },
      { "check_rows", "migrate.check_rows(moves, backups, pg_new)", "ok, message: no rows lost since the backups" },
      { "check_downtime", "migrate.check_downtime(ctx, moves, max)",
        "ok, message: each stop on the old host to now took at most max s" },
      { "old_data", "migrate.old_data(old, move)", "the old host's data directory of a move" },
      { "stop_old", "migrate.stop_old(ctx, old, moves)",
        "stop each container, on the old host (undone by starting it there)" },
      { "backup", "migrate.backup(ctx, old, moves, dir, pg_old)",
        "back up every database of the moves in dir/<name>/, checked" },
      { "prove_backups", "migrate.prove_backups(ctx, moves, names, dir)",
        "restore the named SQLite backups into scratch files and compare rows" },
      { "copy", "migrate.copy(ctx, old, moves, {algo, dir})",
        "copy each data directory, verified against a manifest made on the old host" },
      { "pull", "migrate.pull(ctx, old, from, to, {dir})",
        "rsync from (on the old host) to here over ssh; undone by removing to" },
      { "restore_databases", "migrate.restore_databases(ctx, moves, pg_new)",
        "restore each PostgreSQL dump on the new server, rows compared" },
      { "routes", "migrate.routes(moves, label)", "a Traefik dynamic configuration routing each move's host" },
      { "sqlite_counts", "migrate.sqlite_counts(file, tables [, old])",
        "{table = rows} after SQLite's integrity check, or nil, message" },
      { "pg_counts", "migrate.pg_counts(database, server)",
        "the rows of each user table: {[\"schema.table\"] = rows}" },
      { "pg_server", "migrate.pg_server(server)",
        "pg's connection options of a {host, port, user} (\"\", 0: libpq's)" },
      { "show_counts", "migrate.show_counts(counts)", "\"users 2, ciphers 500\": row counts as text, by table" },
      { "keys", "migrate.keys(t)", "the keys of t, sorted" },
      { "found", "migrate.found(ctx, ok, message)",
        "ok, message: a check's answer, its message logged when it passed" },
      { "tag", "migrate.tag(ctx, flake, name, message)",
        "an annotated tag on the configuration's HEAD (undone by deleting it)" },
    }),
  section("notify", "module", "notifications (Lua, on http.post): ntfy and webhooks", "docs/reference.md#notify-lua", {
    { "ntfy", "notify.ntfy(topic_url, message, {title, priority, tags, timeout})",
      "publish a message to an ntfy topic (a POST: journaled, not sent in plans)" },
    { "webhook", "notify.webhook(url, t, {headers, timeout})", "POST t as JSON to url" },
    { "run_end", "notify.run_end(url, event, host)", "report a run's end as --notify does (ntfy text, or json:URL)" },
  }),
  -- git.open(dir)'s object: its methods are git's functions with its path (filled below).
  section("repo", "methods", "a repository from git.open(dir): repo:f(…) is git.f(repo.path, …)",
    "docs/reference.md#git", {}),
  -- hosts.NAME.<module>.<fn>(…): every module above, called on another host
  section("hosts", "hosts", "hosts.NAME.fs.write(…): a module function run on host NAME of the playbook's hosts",
    "docs/hosts.md", {}),
  section("dsl", "dsl", "the playbook language: what a playbook file is made of", "docs/playbooks.md#the-language", {
    { "playbook", "playbook { name = …, params = {…}, phase … }",
      "a playbook: name, version, params, capabilities, on_failure, hosts; its phases" },
    { "phase", "phase \"name\" { … }", "a phase: description, when(ctx); its checks, then its steps, in order" },
    { "step", "step \"name\" { run = function(ctx) … end }",
      "a step: run (required), undo, verify, when, timeout, retries, confirm, on, detach, …" },
    { "check", "check \"name\" (function(ctx) … end)", "a check: returns true, or false and why; changes nothing" },
    { "handler", "handler \"name\" { run = function(ctx) … end }",
      "run once at its phase's end when a step notified it" },
    { "required", "required \"TYPE\"",
      "a parameter without a default: \"string\", \"number\", \"boolean\" or \"table\"" },
  }),
  section("ctx", "ctx", "what every function of a step (run, undo, verify, when, checks) gets",
    "docs/playbooks.md#ctx", {
      { "params", "ctx.params", "the parameters, read-only" },
      { "state", "ctx.state", "this step's table (JSON values), journaled: undo and a resume see it" },
      { "shared", "ctx.shared", "the run's table, shared by all steps, saved after every step" },
      { "plan", "ctx.plan", "true in plan mode" },
      { "run_id", "ctx.run_id", "the run's id in the journal" },
      { "phase", "ctx.phase", "the phase's name" },
      { "step", "ctx.step", "the step's (or check's) name" },
      { "log", "ctx.log(fmt, …)", "a line under the step, in the journal's events too" },
      { "notify", "ctx.notify(name)", "notify a handler from a step's run: it runs once at the phase's end" },
    }),
}

-- The repository object's methods: git's functions that take the directory first.
M.repo_methods = { "head", "status", "log", "tags", "diff", "fetch", "commit", "tag", "delete_tag",
  "checkout_paths", "checkout" }

local by_name = {}
for _, s in ipairs(M.sections) do
  by_name[s.name] = s
  s.by_name = {}
  for _, e in ipairs(s.entries) do
    s.by_name[e.name] = e
  end
end
do
  local repo = by_name.repo
  for _, m in ipairs(M.repo_methods) do
    local g = by_name.git.by_name[m]
    local sig = g.sig:gsub("^git%.([%w_]+)%(dir%)", "repo:%1()"):gsub("^git%.([%w_]+)%(dir, ", "repo:%1(")
    local e = { name = m, sig = sig, doc = g.doc }
    repo.entries[#repo.entries + 1] = e
    repo.by_name[m] = e
  end
end

-- section(name) → the section of that name ("fs", "repo", "dsl", "ctx"), or nil
function M.section(name)
  return by_name[name]
end

-- entry(section, name) → the entry of that name in that section, or nil
function M.entry(sname, name)
  local s = by_name[sname]
  return s and s.by_name[name]
end

return M
