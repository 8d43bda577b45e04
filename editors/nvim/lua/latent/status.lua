-- Latent's state as the server reports it (the latent/status notification): the messages
-- while the model loads, require('latent').status() and statusline(), and :LatentStatus.
local M = {}

local api = vim.api

-- latent (init.lua) requires this module while it loads: it is looked up when used.
local function latent()
  return require('latent')
end

--- A field of a status; nil when the server sent none or null (vim.NIL).
function M.value(v)
  return v ~= nil and v ~= vim.NIL and v or nil
end
local value = M.value

local function figure(n, unit)
  return type(n) == 'number' and (string.format('%.0f', n) .. unit) or '?'
end

--- Unix seconds as a time of day: "14:05".
function M.clock(unix)
  return os.date('%H:%M', math.floor(unix))
end
local clock = M.clock

--- The annotation for a completion (the `last` of a latent/status): its latency, and the
--- tokens the model generated or where the answer came from ("cache", "typing-through").
function M.annotation(last)
  if type(last) ~= 'table' or not value(last.latencyMs) or (last.suggestions or 0) == 0 then
    return nil
  end
  local source = last.source == 'model' and ('%d tok'):format(value(last.generatedTokens) or 0) or last.source
  return ('%s · %s'):format(figure(last.latencyMs, ' ms'), source)
end

-- -----------------------------------------------------------------------------------------
-- The latent/status notification

--- Say when the model starts loading and when it is ready, in the server's words ("Loading
--- the model bundled.", "Loaded bundled in 2.1 s."). A failure the server shows itself
--- (window/showMessage).
local function announce(previous, params)
  if not latent().config.notify or params.state == previous or type(params.message) ~= 'string' then
    return
  end
  if params.state == 'loading' or (params.state == 'ready' and previous == 'loading') then
    latent().notify(params.message)
  end
end

--- The handler of latent/status: keep it (require('latent').servers), announce the model's
--- loading, annotate a new completion, and tell status lines (User LatentStatus).
function M.on_status(err, params, ctx)
  if err or type(params) ~= 'table' then
    return
  end
  local servers = latent().servers
  local previous = servers[ctx.client_id]
  servers[ctx.client_id] = params
  announce(previous and previous.state, params)
  local last, before = value(params.last), previous and value(previous.last)
  if last and (not before or last.request ~= before.request) then   -- a new completion
    -- latent.annotation requires this module, so it is looked up here
    require('latent.annotation').native(ctx.client_id, last)
  end
  api.nvim_exec_autocmds('User', { pattern = 'LatentStatus', modeline = false })
end

-- -----------------------------------------------------------------------------------------
-- status() and statusline()

--- The last status of the server of a buffer (the current one by default), else of any.
local function server(bufnr)
  local servers = latent().servers
  bufnr = (bufnr == nil or bufnr == 0) and api.nvim_get_current_buf() or bufnr
  for _, client in ipairs(latent().clients(bufnr)) do
    if servers[client.id] then
      return servers[client.id]
    end
  end
  return select(2, next(servers))
end

--- Latent's state for a status line, from the server's last `latent/status`:
---   state       'ready' | 'loading' | 'error' | 'off' (completion turned off) |
---               'snoozed' (off until snoozed_until) | 'starting' (no status yet) |
---               'stopped' (no server)
---   model       the model's name ('' before the server says)
---   latency_ms  the last completion's latency (nil before the first)
---   reason      why the last completion had no suggestion (a sentence; nil when it had one)
---   message     the server's message (the error when state is 'error')
---   snoozed_until  when a snooze ends (Unix seconds; nil when not snoozed)
function M.status(bufnr)
  local s = server(bufnr)
  if not s then
    return { state = #latent().clients() > 0 and 'starting' or 'stopped', model = '' }
  end
  local last = value(s.last) or {}
  local reason = last.suggestions == 0 and value(last.reasonText) or nil
  local snoozed = s.enabled == false and value(s.snoozedUntil) or nil
  return {
    state = s.enabled == false and s.state == 'ready' and (snoozed and 'snoozed' or 'off') or s.state or '?',
    model = value(s.model) or '',
    latency_ms = value(s.lastLatencyMs),
    reason = reason ~= '' and reason or nil,
    message = value(s.message),
    snoozed_until = snoozed,
  }
end

--- One short line for a status line: "Latent 12 ms", "Latent loading", "Latent off",
--- "Latent snoozed until 14:05", "".
function M.statusline(bufnr)
  local s = M.status(bufnr)
  if s.state == 'stopped' then
    return ''
  end
  if s.state == 'ready' and s.latency_ms then
    return 'Latent ' .. figure(s.latency_ms, ' ms')
  end
  if s.state == 'snoozed' then
    return 'Latent snoozed until ' .. clock(s.snoozed_until)
  end
  return 'Latent ' .. s.state
end

-- -----------------------------------------------------------------------------------------
-- :LatentStatus and :LatentStatus!

--- What :LatentStatus prints: "Latent: ready, model bundled", then the last completion
--- and the cache.
function M.status_lines()
  local lines = {}
  local servers = latent().servers
  local several = vim.tbl_count(servers) > 1
  for id, s in pairs(servers) do
    local cache, last = value(s.cache) or {}, value(s.last) or {}
    local snoozed = s.enabled == false and value(s.snoozedUntil)
    local state = (s.state or '?') .. (snoozed and (', snoozed until ' .. clock(snoozed))
      or s.enabled == false and ', completion off' or '')
    table.insert(lines, ('Latent%s: %s, model %s'):format(several and (' (client %d)'):format(id) or '',
      state, value(s.model) or '?'))
    if value(s.message) and s.message ~= '' and s.state ~= 'ready' then
      table.insert(lines, '  ' .. s.message)
    end
    if value(s.lastLatencyMs) then
      local why = last.suggestions == 0 and value(last.reasonText) or nil
      table.insert(lines, '  last completion ' .. figure(s.lastLatencyMs, ' ms')
        .. (why and why ~= '' and (', no suggestion: ' .. why) or ''))
    end
    if value(cache.tokens) then
      table.insert(lines, ('  cache %s tokens, hit rate %s'):format(
        cache.tokens, value(cache.hitRate) and string.format('%.0f%%', 100 * cache.hitRate) or '?'))
    end
  end
  if #lines == 0 then
    lines = { #latent().clients() > 0 and 'Latent: starting'
      or 'Latent: not running (open a file of a configured filetype)' }
  end
  return lines
end

--- A number as people read it: integers whole, others with three significant digits.
local function number(n)
  if n == math.floor(n) and math.abs(n) < 1e15 then
    return string.format('%d', n)
  end
  return string.format('%.3g', n)
end

local function scalar(v)
  if v == vim.NIL or v == nil then
    return 'none'
  elseif type(v) == 'number' then
    return number(v)
  end
  return tostring(v)
end

--- Figures (nested tables from latent.stats) as indented "name  value" lines, names sorted.
function M.figure_lines(t, indent, out)
  indent, out = indent or '', out or {}
  local keys = vim.tbl_keys(t)
  table.sort(keys, function(a, b)
    if type(a) == 'number' and type(b) == 'number' then
      return a < b
    end
    return tostring(a) < tostring(b)
  end)
  local width = 0
  for _, k in ipairs(keys) do
    width = math.max(width, #tostring(k))
  end
  local row = '%s%-' .. width .. 's  %s'
  for _, k in ipairs(keys) do
    local v = t[k]
    local flat = type(v) ~= 'table' or next(v) == nil
      or (vim.islist(v) and not vim.iter(v):any(function(x) return type(x) == 'table' end))
    if not flat then
      table.insert(out, indent .. tostring(k))
      M.figure_lines(v, indent .. '  ', out)
    elseif type(v) == 'table' then
      table.insert(out, row:format(indent, k, next(v) == nil and 'none' or table.concat(vim.tbl_map(scalar, v), ', ')))
    else
      table.insert(out, row:format(indent, k, scalar(v)))
    end
  end
  return out
end

--- Show lines in a scratch window at the bottom (q closes it).
local function scratch(name, lines)
  local existing = vim.fn.bufnr(name)
  if existing > 0 then
    api.nvim_buf_delete(existing, { force = true })
  end
  vim.cmd('botright new')
  local bufnr = api.nvim_get_current_buf()
  vim.bo[bufnr].buftype, vim.bo[bufnr].bufhidden, vim.bo[bufnr].swapfile = 'nofile', 'wipe', false
  api.nvim_buf_set_name(bufnr, name)
  api.nvim_buf_set_lines(bufnr, 0, -1, false, lines)
  vim.bo[bufnr].modifiable = false
  vim.keymap.set('n', 'q', '<cmd>close<cr>', { buffer = bufnr, nowait = true, desc = 'Latent: close' })
end

--- :LatentStatus shows status_lines() in a floating window at the cursor that the next move
--- closes, as hover does: echoed, several lines would stop at a "Press ENTER" prompt.
--- :LatentStatus! (`all`) shows every figure of each server (latent.stats) in a scratch window.
function M.show_status(all)
  if not all then
    vim.lsp.util.open_floating_preview(M.status_lines(), 'text', { focus_id = 'latent-status', border = 'rounded' })
    return
  end
  latent().command('latent.stats', {}, function(result, client)
    local lines = { ('Latent statistics (client %d); q closes'):format(client.id), '' }
    vim.list_extend(lines, M.figure_lines(type(result) == 'table' and result or {}))
    scratch(('latent://statistics/%d'):format(client.id), lines)
  end)
end

return M
