-- hrun.notify: notifications over http — ntfy (plain text with ntfy's headers) and
-- webhooks (JSON). In a playbook step they are journaled writes like any POST (a plan
-- lists them and sends nothing); `--notify URL` reports a run's end this way.

local http = require "hrun.http"

local M = {}

local function answered(what, url, r, err, code)
  if not r then
    return nil, err, code
  end
  if r.status < 200 or r.status >= 300 then
    return nil, string.format("%s: %s: status %d", what, url, r.status), "EHTTP"
  end
  return r
end

-- notify.ntfy(topic_url, message [, {title, priority = 1..5, tags = {…}, timeout}])
-- → the response | nil, message, code (a status other than 2xx is a failure here)
function M.ntfy(url, message, opts)
  assert(type(url) == "string", "bad argument #1 to 'notify.ntfy' (a topic URL expected)")
  assert(type(message) == "string", "bad argument #2 to 'notify.ntfy' (string expected)")
  opts = opts or {}
  local headers = {}
  if opts.title then
    headers.Title = opts.title
  end
  if opts.priority then
    headers.Priority = tostring(opts.priority)
  end
  if opts.tags then
    headers.Tags = table.concat(opts.tags, ",")
  end
  local r, err, code = http.request(url, { method = "POST", body = message, headers = headers,
    timeout = opts.timeout or 10 })
  return answered("notify.ntfy", url, r, err, code)
end

-- notify.webhook(url, table [, {headers, timeout}]) → the response | nil, message, code:
-- the table as a JSON body.
function M.webhook(url, data, opts)
  assert(type(url) == "string", "bad argument #1 to 'notify.webhook' (a URL expected)")
  assert(type(data) == "table", "bad argument #2 to 'notify.webhook' (table expected)")
  opts = opts or {}
  local r, err, code = http.request(url, { method = "POST", json = data, headers = opts.headers,
    timeout = opts.timeout or 10 })
  return answered("notify.webhook", url, r, err, code)
end

-- The end of a run, for --notify: URL is an ntfy topic (a text message with a title,
-- priority high when the run did not end done), or json:URL for a webhook that takes
-- the run-end event as JSON. Returns true, or nil and why.
function M.run_end(url, ev, host)
  local fine = ev.status == "done" or ev.status == "rolled-back" and ev.exit == 0
  local summary = string.format("%s: %s run %s %s (exit %d) in %.1f s", host, ev.playbook or "?",
    tostring(ev.run or "-"), ev.status, ev.exit, ev.seconds or 0)
  local target = url:match("^json:(.+)$")
  if target then
    local data = { event = "run-end", host = host, playbook = ev.playbook, run = ev.run, status = ev.status,
      exit = ev.exit, error = ev.error, seconds = ev.seconds }
    return M.webhook(target, data)
  end
  return M.ntfy(url, summary .. (ev.error and ("\n" .. ev.error) or ""), {
    title = string.format("hrun: %s %s", ev.playbook or "run", ev.status),
    priority = fine and 3 or 4,
    tags = { fine and "white_check_mark" or "warning" },
  })
end

return M
