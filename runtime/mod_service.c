/*
** mod_service.c — the `service` module: systemd units over D-Bus (sd-bus, the system bus;
** DBUS_SYSTEM_BUS_ADDRESS says where it is). status, failed, list, is_enabled; start,
** stop, restart, reload wait for their job (JobRemoved) and report the state it left.
*/
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <systemd/sd-bus.h>

#include "internal.h"

#define SD_DEST "org.freedesktop.systemd1"
#define SD_PATH "/org/freedesktop/systemd1"
#define SD_MGR  "org.freedesktop.systemd1.Manager"
#define SD_UNIT "org.freedesktop.systemd1.Unit"
#define SD_SVC  "org.freedesktop.systemd1.Service"

/* {======================================================
** The bus
** ======================================================= */

typedef struct Bus {
    sd_bus *bus;
    sd_bus_slot *slot;
} Bus;

static int bus_close(lua_State *L)
{
    Bus *b = lua_touserdata(L, 1);
    if (b->slot) sd_bus_slot_unref(b->slot);
    if (b->bus) sd_bus_flush_close_unref(b->bus);
    b->slot = NULL, b->bus = NULL;
    return 0;
}

/* [-0, +1, m] A connection to the system bus, closed when the function returns; NULL
** after pushing the failure (nil, message, code). */
static sd_bus *open_bus(lua_State *L, const char *what)
{
    Bus *b = lua_newuserdatauv(L, sizeof(Bus), 0);
    b->bus = NULL, b->slot = NULL;
    hrun_setclose(L, "hrun.service.bus", bus_close, NULL);
    lua_toclose(L, -1);
    int r = sd_bus_open_system(&b->bus);
    if (r < 0) {
        const char *addr = getenv("DBUS_SYSTEM_BUS_ADDRESS");
        hrun_failf(L, "ENOBUS", "%s: cannot reach systemd on the system bus (%s): %s", what,
                   addr ? addr : "unix:path=/run/dbus/system_bus_socket", strerror(-r));
        return NULL;
    }
    return b->bus;
}

/* [-0, +3, m] nil, "what: unit: the bus error", code */
static int bus_fail(lua_State *L, const char *what, const char *unit, sd_bus_error *e, int r)
{
    const char *code = "EBUS";
    if (sd_bus_error_has_name(e, "org.freedesktop.systemd1.NoSuchUnit"))
        code = "ENOENT";
    else if (sd_bus_error_has_name(e, "org.freedesktop.DBus.Error.AccessDenied"))
        code = "EACCES";
    else if (sd_bus_error_has_name(e, "org.freedesktop.systemd1.UnitMasked"))
        code = "EMASKED";
    const char *msg = e->message ? e->message : strerror(-r);
    hrun_failf(L, code, "%s: %s: %s", what, unit, msg);
    sd_bus_error_free(e);
    return 3;
}

/* A unit's name as systemctl takes it: "nginx" is nginx.service. */
static const char *unit_name(lua_State *L, int arg)
{
    size_t len;
    const char *u = luaL_checklstring(L, arg, &len);
    if (len == 0 || strlen(u) != len || strchr(u, '/')) luaL_argerror(L, arg, "not a unit name");
    const char *dot = strrchr(u, '.');
    if (dot == NULL || dot[1] == '\0') {
        lua_pushfstring(L, "%s.service", u);
        lua_replace(L, arg);
        u = lua_tostring(L, arg);
    }
    return u;
}

/* The object path of a unit (loading it: a unit that does not exist has one too, with
** LoadState "not-found"), into a Lua string on top. 0, or a negative errno. */
static int unit_path(lua_State *L, sd_bus *bus, const char *unit, sd_bus_error *e)
{
    sd_bus_message *m = NULL;
    const char *path;
    int r = sd_bus_call_method(bus, SD_DEST, SD_PATH, SD_MGR, "LoadUnit", e, &m, "s", unit);
    if (r >= 0) r = sd_bus_message_read(m, "o", &path);
    if (r >= 0) lua_pushstring(L, path);
    sd_bus_message_unref(m);
    return r < 0 ? r : 0;
}

/* [-0, +1, m] Property `name` of the unit at path as a string field of the table on top. */
static int get_string(lua_State *L, sd_bus *bus, const char *path, const char *iface,
                      const char *name, const char *field)
{
    sd_bus_error e = SD_BUS_ERROR_NULL;
    char *s = NULL;
    int r = sd_bus_get_property_string(bus, SD_DEST, path, iface, name, &e, &s);
    if (r >= 0 && s && *s) {
        lua_pushstring(L, s);
        lua_setfield(L, -2, field);
    }
    free(s);
    sd_bus_error_free(&e);
    return r;
}

/* [-0, +1, m] The unit's state: {unit, description, load, active, sub, since, main_pid,
** restarts, result}; since in seconds since the epoch (the last state change). */
static int push_status(lua_State *L, sd_bus *bus, const char *unit, const char *path)
{
    lua_createtable(L, 0, 9);
    lua_pushstring(L, unit);
    lua_setfield(L, -2, "unit");
    int r = get_string(L, bus, path, SD_UNIT, "LoadState", "load");
    if (r < 0) return r;
    get_string(L, bus, path, SD_UNIT, "ActiveState", "active");
    get_string(L, bus, path, SD_UNIT, "SubState", "sub");
    get_string(L, bus, path, SD_UNIT, "Description", "description");
    sd_bus_error e = SD_BUS_ERROR_NULL;
    uint64_t t = 0;
    if (sd_bus_get_property_trivial(bus, SD_DEST, path, SD_UNIT, "StateChangeTimestamp", &e, 't',
                                    &t) >= 0 &&
        t > 0) {
        lua_pushnumber(L, (double)t / 1e6);
        lua_setfield(L, -2, "since");
    }
    sd_bus_error_free(&e);
    size_t n = strlen(unit);
    if (n > 8 && strcmp(unit + n - 8, ".service") == 0) {
        uint32_t pid = 0, restarts = 0;
        if (sd_bus_get_property_trivial(bus, SD_DEST, path, SD_SVC, "MainPID", &e, 'u', &pid) >=
            0) {
            lua_pushinteger(L, pid);
            lua_setfield(L, -2, "main_pid");
        }
        sd_bus_error_free(&e);
        if (sd_bus_get_property_trivial(bus, SD_DEST, path, SD_SVC, "NRestarts", &e, 'u',
                                        &restarts) >= 0) {
            lua_pushinteger(L, restarts);
            lua_setfield(L, -2, "restarts");
        }
        sd_bus_error_free(&e);
        get_string(L, bus, path, SD_SVC, "Result", "result");
    }
    return 0;
}

/* }====================================================== */

/* {======================================================
** Reading
** ======================================================= */

/*
** service.status(unit) → {unit, description, load, active, sub, since, main_pid, restarts,
** result} | nil, message, code. A unit that does not exist has load = "not-found".
*/
static int l_status(lua_State *L)
{
    const char *unit = unit_name(L, 1);
    sd_bus *bus = open_bus(L, "service.status");
    if (bus == NULL) return 3;
    sd_bus_error e = SD_BUS_ERROR_NULL;
    int r = unit_path(L, bus, unit, &e);
    if (r < 0) return bus_fail(L, "service.status", unit, &e, r);
    r = push_status(L, bus, unit, lua_tostring(L, -1));
    if (r < 0) return bus_fail(L, "service.status", unit, &e, r);
    return 1;
}

/* [-0, +1, m] The units of a ListUnits* reply: {{unit, description, load, active, sub}} */
static int push_units(lua_State *L, sd_bus_message *m)
{
    int r = sd_bus_message_enter_container(m, SD_BUS_TYPE_ARRAY, "(ssssssouso)");
    if (r < 0) return r;
    lua_newtable(L);
    const char *name, *desc, *load, *active, *sub, *follow, *path, *jtype, *jpath;
    uint32_t jid;
    lua_Integer k = 0;
    while ((r = sd_bus_message_read(m, "(ssssssouso)", &name, &desc, &load, &active, &sub, &follow,
                                    &path, &jid, &jtype, &jpath)) > 0) {
        lua_createtable(L, 0, 5);
        lua_pushstring(L, name);
        lua_setfield(L, -2, "unit");
        lua_pushstring(L, desc);
        lua_setfield(L, -2, "description");
        lua_pushstring(L, load);
        lua_setfield(L, -2, "load");
        lua_pushstring(L, active);
        lua_setfield(L, -2, "active");
        lua_pushstring(L, sub);
        lua_setfield(L, -2, "sub");
        lua_rawseti(L, -2, ++k);
    }
    return r;
}

static int by_unit(lua_State *L)
{
    lua_getfield(L, 1, "unit");
    lua_getfield(L, 2, "unit");
    lua_pushboolean(L, strcmp(lua_tostring(L, -2), lua_tostring(L, -1)) < 0);
    return 1;
}

/* Lists units by states and patterns (string lists, may be empty). */
static int list_units(lua_State *L, const char *what, const char *state, const char *pattern)
{
    sd_bus *bus = open_bus(L, what);
    if (bus == NULL) return 3;
    sd_bus_message *q = NULL, *m = NULL;
    sd_bus_error e = SD_BUS_ERROR_NULL;
    int r =
        sd_bus_message_new_method_call(bus, &q, SD_DEST, SD_PATH, SD_MGR, "ListUnitsByPatterns");
    if (r >= 0)
        r = state ? sd_bus_message_append(q, "as", 1, state) : sd_bus_message_append(q, "as", 0);
    if (r >= 0)
        r = pattern ? sd_bus_message_append(q, "as", 1, pattern)
                    : sd_bus_message_append(q, "as", 0);
    if (r >= 0) r = sd_bus_call(bus, q, 0, &e, &m);
    sd_bus_message_unref(q);
    if (r >= 0) r = push_units(L, m);
    sd_bus_message_unref(m);
    if (r < 0) return bus_fail(L, what, pattern ? pattern : "*", &e, r);
    lua_getglobal(L, "table");
    lua_getfield(L, -1, "sort");
    lua_pushvalue(L, -3);
    lua_pushcfunction(L, by_unit);
    lua_call(L, 2, 0);
    lua_pop(L, 1);
    return 1;
}

/* service.failed() → {{unit, description, load, active, sub}, …}: the units that failed */
static int l_failed(lua_State *L)
{
    return list_units(L, "service.failed", "failed", NULL);
}

/* service.list([pattern]) → the loaded units whose names match the glob ("podman-*") */
static int l_list(lua_State *L)
{
    const char *pattern = luaL_optstring(L, 1, NULL);
    return list_units(L, "service.list", NULL, pattern);
}

/* service.is_enabled(unit) → enabled, state ("enabled", "disabled", "static", "masked", …) */
static int l_is_enabled(lua_State *L)
{
    const char *unit = unit_name(L, 1);
    sd_bus *bus = open_bus(L, "service.is_enabled");
    if (bus == NULL) return 3;
    sd_bus_message *m = NULL;
    sd_bus_error e = SD_BUS_ERROR_NULL;
    const char *state;
    int r =
        sd_bus_call_method(bus, SD_DEST, SD_PATH, SD_MGR, "GetUnitFileState", &e, &m, "s", unit);
    if (r >= 0) r = sd_bus_message_read(m, "s", &state);
    if (r < 0) {
        sd_bus_message_unref(m);
        return bus_fail(L, "service.is_enabled", unit, &e, r);
    }
    lua_pushboolean(L, strcmp(state, "enabled") == 0 || strcmp(state, "enabled-runtime") == 0 ||
                           strcmp(state, "alias") == 0);
    lua_pushstring(L, state);
    sd_bus_message_unref(m);
    return 2;
}

/* }====================================================== */

/* {======================================================
** Jobs: start, stop, restart, reload
** ======================================================= */

typedef struct Job {
    const char *path; /* the job's object path, once queued */
    char result[32];  /* JobRemoved's result: done, failed, timeout, canceled, … */
    int removed;
} Job;

static int on_job_removed(sd_bus_message *m, void *ud, sd_bus_error *err)
{
    Job *j = ud;
    uint32_t id;
    const char *path, *unit, *result;
    (void)err;
    if (sd_bus_message_read(m, "uoss", &id, &path, &unit, &result) < 0) return 0;
    if (j->path && strcmp(path, j->path) == 0) {
        snprintf(j->result, sizeof j->result, "%s", result);
        j->removed = 1;
    }
    return 0;
}

static const char *const job_options[] = {"wait", "timeout", "mode", NULL};

/* The body of start/stop/restart/reload: method on the Manager, the unit at arg 1. */
static int job(lua_State *L, const char *what, const char *method)
{
    const char *unit = unit_name(L, 1);
    hrun_checkopts(L, 2, job_options);
    int wait = hrun_optbool(L, 2, "wait", 1);
    double timeout = hrun_optnumber(L, 2, "timeout", 90);
    const char *mode = hrun_optstring(L, 2, "mode", "replace", NULL);
    if (timeout <= 0) luaL_argerror(L, 2, "field 'timeout': must be positive");
    lua_settop(L, 2);
    sd_bus *bus = open_bus(L, what); /* 3 */
    if (bus == NULL) return 3;
    Bus *b = lua_touserdata(L, 3);
    sd_bus_error e = SD_BUS_ERROR_NULL;
    int r = unit_path(L, bus, unit, &e); /* 4 */
    if (r < 0) return bus_fail(L, what, unit, &e, r);
    lua_newtable(L); /* 5: a scratch status, to see whether the unit exists */
    get_string(L, bus, lua_tostring(L, 4), SD_UNIT, "LoadState", "load");
    lua_getfield(L, 5, "load");
    if (lua_isstring(L, -1) && strcmp(lua_tostring(L, -1), "not-found") == 0)
        return hrun_failf(L, "ENOENT", "%s: %s: no such unit", what, unit);
    lua_settop(L, 4);
    Job j = {NULL, "", 0};
    /* subscribed before the call: a job that ends at once is not missed */
    r = sd_bus_call_method(bus, SD_DEST, SD_PATH, SD_MGR, "Subscribe", &e, NULL, "");
    if (r >= 0)
        r = sd_bus_match_signal(bus, &b->slot, SD_DEST, SD_PATH, SD_MGR, "JobRemoved",
                                on_job_removed, &j);
    sd_bus_message *m = NULL;
    if (r >= 0)
        r = sd_bus_call_method(bus, SD_DEST, SD_PATH, SD_MGR, method, &e, &m, "ss", unit, mode);
    if (r >= 0) r = sd_bus_message_read(m, "o", &j.path);
    if (r < 0) {
        sd_bus_message_unref(m);
        return bus_fail(L, what, unit, &e, r);
    }
    lua_pushstring(L, j.path); /* 5: keeps the job path */
    j.path = lua_tostring(L, 5);
    sd_bus_message_unref(m);
    double deadline = hrun_deadline(L), end = hrun_monotime() + timeout;
    int step_bound = deadline > 0 && deadline < end;
    if (step_bound) end = deadline;
    while (wait && !j.removed) {
        r = sd_bus_process(bus, NULL);
        if (r < 0) return hrun_failf(L, "EBUS", "%s: %s: the bus: %s", what, unit, strerror(-r));
        if (r > 0) continue;
        if (hrun_interrupted()) return hrun_raiseinterrupt(L);
        double left = end - hrun_monotime();
        if (left <= 0) {
            if (step_bound) return hrun_raisetimeout(L);
            return hrun_failf(L, "ETIMEDOUT", "%s: %s: the job did not finish in %f s", what, unit,
                              timeout);
        }
        sd_bus_wait(bus, (uint64_t)((left < 0.1 ? left : 0.1) * 1e6));
    }
    r = push_status(L, bus, unit, lua_tostring(L, 4));
    if (r < 0) return bus_fail(L, what, unit, &e, r);
    if (wait) {
        lua_pushstring(L, j.result);
        lua_setfield(L, -2, "job");
        if (strcmp(j.result, "done") != 0) {
            lua_getfield(L, -1, "active");
            lua_getfield(L, -2, "result");
            return hrun_failf(L, "EUNIT", "%s: %s: the job %s%s (now %s%s%s)", what, unit,
                              strcmp(j.result, "failed") == 0 ? "" : "ended ", j.result,
                              lua_isstring(L, -2) ? lua_tostring(L, -2) : "?",
                              lua_isstring(L, -1) ? ", result " : "",
                              lua_isstring(L, -1) ? lua_tostring(L, -1) : "");
        }
    }
    return 1;
}

/*
** service.start / stop / restart / reload(unit [, {wait = true, timeout = 90, mode =
** "replace"}]) → the unit's status after the job, with job = "done" | nil, message, code
** ("ENOENT": no such unit; "EUNIT": the job failed, with the state it left; "ETIMEDOUT")
*/
static int l_start(lua_State *L)
{
    return job(L, "service.start", "StartUnit");
}

static int l_stop(lua_State *L)
{
    return job(L, "service.stop", "StopUnit");
}

static int l_restart(lua_State *L)
{
    return job(L, "service.restart", "RestartUnit");
}

static int l_reload(lua_State *L)
{
    return job(L, "service.reload", "ReloadUnit");
}

/* Undo of start and stop: the unit back in the state it is in now (active or not). */
/*
** service._reset_failed(unit) → true | nil, message, code
** Undo operation: forgets that the unit failed (systemctl reset-failed), so a unit a
** run started and saw fail is not left failed by its rollback.
*/
static int l_reset_failed(lua_State *L)
{
    const char *unit = unit_name(L, 1);
    sd_bus *bus = open_bus(L, "service._reset_failed");
    if (bus == NULL) return 3;
    sd_bus_error e = SD_BUS_ERROR_NULL;
    int r =
        sd_bus_call_method(bus, SD_DEST, SD_PATH, SD_MGR, "ResetFailedUnit", &e, NULL, "s", unit);
    /* not loaded (collected once stopped): nothing remembers a failure */
    if (r < 0 && !sd_bus_error_has_name(&e, "org.freedesktop.systemd1.NoSuchUnit"))
        return bus_fail(L, "service._reset_failed", unit, &e, r);
    sd_bus_error_free(&e);
    lua_pushboolean(L, 1);
    return 1;
}

/* The inverse of start (starting) or stop: the other one, when the call changes the
** unit's state; a start's also forgets a failure the start may end in (if the unit had
** not failed before it). */
static int start_stop_inverse(lua_State *L, int starting)
{
    const char *unit = unit_name(L, 1);
    lua_settop(L, 1);
    lua_newtable(L); /* 2 */
    sd_bus *bus = open_bus(L, "service");
    if (bus == NULL) return lua_settop(L, 2), 1; /* the call will fail the same way */
    sd_bus_error e = SD_BUS_ERROR_NULL;
    if (unit_path(L, bus, unit, &e) < 0) {
        sd_bus_error_free(&e);
        return lua_settop(L, 2), 1;
    }
    lua_newtable(L);
    get_string(L, bus, lua_tostring(L, -2), SD_UNIT, "ActiveState", "active");
    lua_getfield(L, -1, "active");
    const char *active = lua_tostring(L, -1);
    int was_active = active && (strcmp(active, "active") == 0 || strcmp(active, "reloading") == 0 ||
                                strcmp(active, "activating") == 0);
    int was_failed = active && strcmp(active, "failed") == 0;
    lua_settop(L, 2);
    hrun_undo_startstop(L, 2, "service", unit, starting, was_active);
    if (starting && !was_active && !was_failed) {
        lua_pushstring(L, unit);
        hrun_addop(L, 2, "service._reset_failed", 1);
    }
    return 1;
}

static int start_inverse(lua_State *L)
{
    return start_stop_inverse(L, 1);
}

static int stop_inverse(lua_State *L)
{
    return start_stop_inverse(L, 0);
}

/*
** A unit's fingerprint, key = its name: its ActiveState ("active", "inactive", "failed",
** "activating", …); "absent" when systemd has no such unit. Only start and stop have one:
** a restart or reload cannot be undone, there is nothing to find already undone.
*/
int hrun_unit_fp(lua_State *L)
{
    const char *unit = lua_tostring(L, 1);
    if (unit == NULL) return lua_pushliteral(L, "unreadable: no unit in the key"), 1;
    sd_bus *bus = open_bus(L, "service");
    if (bus == NULL) return lua_pushfstring(L, "unreadable: %s", lua_tostring(L, -2)), 1;
    sd_bus_error e = SD_BUS_ERROR_NULL;
    int r = unit_path(L, bus, unit, &e);
    if (r < 0) {
        lua_pushfstring(L, "unreadable: %s", e.message ? e.message : strerror(-r));
        sd_bus_error_free(&e);
        return 1;
    }
    lua_newtable(L);
    r = get_string(L, bus, lua_tostring(L, -2), SD_UNIT, "LoadState", "load");
    get_string(L, bus, lua_tostring(L, -2), SD_UNIT, "ActiveState", "active");
    lua_getfield(L, -1, "load");
    lua_getfield(L, -2, "active");
    const char *load = lua_tostring(L, -2), *active = lua_tostring(L, -1);
    if (r < 0 || active == NULL)
        lua_pushfstring(L, "unreadable: %s", strerror(r < 0 ? -r : EIO));
    else if (load && strcmp(load, "not-found") == 0 && strcmp(active, "inactive") == 0)
        lua_pushliteral(L, "absent");
    else
        lua_pushstring(L, active);
    return 1;
}

/* start and stop: the unit */
static int unit_state(lua_State *L)
{
    const char *unit = unit_name(L, 1);
    lua_newtable(L);
    lua_pushstring(L, unit);
    hrun_addstate(L, lua_gettop(L) - 1, "unit", unit);
    return 1;
}

/* start (want: "active") and stop ("inactive"): already so when the unit is loaded and
** in that state; pushes its status, read now, or nil */
static int startstop_unchanged(lua_State *L, const char *want)
{
    if (lua_type(L, 1) != LUA_TSTRING) return lua_pushnil(L), 1;
    lua_settop(L, 1);
    if (l_status(L) != 1 || lua_type(L, -1) != LUA_TTABLE) return lua_pushnil(L), 1;
    lua_getfield(L, -1, "load");
    lua_getfield(L, -2, "active");
    int so = lua_isstring(L, -2) && strcmp(lua_tostring(L, -2), "not-found") != 0 &&
             lua_isstring(L, -1) && strcmp(lua_tostring(L, -1), want) == 0;
    lua_pop(L, 2);
    if (!so) lua_pushnil(L);
    return 1;
}

static int start_unchanged(lua_State *L)
{
    return startstop_unchanged(L, "active");
}

static int stop_unchanged(lua_State *L)
{
    return startstop_unchanged(L, "inactive");
}

/* restart and reload: nothing puts a process back as it was */
static int no_inverse(lua_State *L)
{
    lua_pushnil(L);
    lua_pushstring(L, "a restart or reload cannot be undone (the old processes are gone)");
    return 2;
}

/* }====================================================== */

static const hrun_Prim service_prims[] = {
    {.name = "status",
     .func = l_status,
     .kind = HRUN_READ,
     .cap = "service",
     .targets = hrun_targets_arg1},
    {.name = "failed", .func = l_failed, .kind = HRUN_READ, .cap = "service"},
    {.name = "list", .func = l_list, .kind = HRUN_READ, .cap = "service"},
    {.name = "is_enabled",
     .func = l_is_enabled,
     .kind = HRUN_READ,
     .cap = "service",
     .targets = hrun_targets_arg1},
    {.name = "start",
     .func = l_start,
     .kind = HRUN_WRITE,
     .opts = 2,
     .cap = "service",
     .inverse = start_inverse,
     .unchanged = start_unchanged,
     .state = unit_state,
     .targets = hrun_targets_arg1},
    {.name = "stop",
     .func = l_stop,
     .kind = HRUN_WRITE,
     .opts = 2,
     .cap = "service",
     .inverse = stop_inverse,
     .unchanged = stop_unchanged,
     .state = unit_state,
     .targets = hrun_targets_arg1},
    {.name = "_reset_failed",
     .func = l_reset_failed,
     .kind = HRUN_WRITE,
     .cap = "service",
     .targets = hrun_targets_arg1},
    {.name = "restart",
     .func = l_restart,
     .kind = HRUN_WRITE,
     .opts = 2,
     .cap = "service",
     .inverse = no_inverse,
     .targets = hrun_targets_arg1},
    {.name = "reload",
     .func = l_reload,
     .kind = HRUN_WRITE,
     .opts = 2,
     .cap = "service",
     .inverse = no_inverse,
     .targets = hrun_targets_arg1},
    {0},
};

int luaopen_hrun_service(lua_State *L)
{
    hrun_newmodule(L, "service", service_prims);
    return 1;
}
