-- Latent for Neovim: starts `latent lsp` with the built-in client and shows its inline
-- completions as ghost text — while typing through vim.lsp.inline_completion on Neovim 0.12+
-- and through latent.ghost (extmarks) on 0.10 / 0.11; the suggestions asked for with a key
-- (trigger, next / previous) through latent.ghost everywhere. See :help latent.
local M = {}

local api = vim.api
local ghost = require('latent.ghost')

local NAME = 'latent'

--- The language server's settings (lsp_server/settings.py), with its defaults. They travel as
--- initializationOptions and workspace/didChangeConfiguration; nil means "the server's default".
M.server_settings = {
  -- the model and how it runs (a change reloads the model)
  'model', 'engine', 'device', 'dtype', 'quantize', 'threads', 'max_context', 'cache_mb',
  'reuse', 'attention', 'absorb_threshold', 'shift_min_tokens', 'shift_max_steps', 'shift_max_drift',
  'speculate', 'compile', 'daemon_idle_minutes', 'api_key_env', 'tokenizer', 'allow_insecure_remote',
  -- what is asked of it (a change applies to the next request)
  'max_prompt_tokens', 'prefix_fraction', 'snippet_tokens', 'max_new_tokens_line',
  'max_new_tokens_block', 'multiline', 'temperature', 'top_p', 'top_k', 'seed', 'fim_format',
  'fim_layout', 'lru_size',
  -- the server
  'enable', 'languages', 'disabled_languages', 'all_languages', 'trigger', 'debounce_ms', 'completion_items',
  'suggestions', 'log_level',
  'max_message_mb', 'max_parse_kb',
}

M.defaults = {
  cmd = { 'latent', 'lsp' },      -- the server command; e.g. { '/path/.venv/bin/python', '-m', 'lsp_server', 'lsp' }
  cmd_env = nil,                  -- extra environment for the server process
  filetypes = {
    'python', 'javascript', 'javascriptreact', 'typescript', 'typescriptreact', 'go', 'rust',
    'java', 'c', 'cpp', 'lua', 'sh', 'bash',
  },
  root_markers = { '.git', 'pyproject.toml', 'package.json', 'Cargo.toml', 'go.mod' },
  ghost = 'auto',                 -- 'auto' | 'native' (0.12+) | 'extmark'
  annotate = true,                -- the last latency after the ghost text: "  74 ms · 12 tok"
  snooze_minutes = 15,            -- :LatentSnooze without a number
  keymaps = {                     -- insert mode; false turns one off
    accept = '<Tab>',
    accept_word = '<M-Right>',
    accept_line = '<M-C-Right>',
    next = '<M-]>',
    prev = '<M-[>',
    trigger = '<M-\\>',
    dismiss = '<C-]>',
  },
  settings = {},                  -- server settings (any of M.server_settings); also accepted at the top level
  notify = true,                  -- say when the model starts loading and when it is ready
}

M.config = vim.deepcopy(M.defaults)
M.servers = {}                    -- client id -> the last latent/status params

local function has(version)
  return vim.fn.has('nvim-' .. version) == 1
end

--- 'native' when vim.lsp.inline_completion is there and wanted, else 'extmark'.
function M.renderer()
  local want = M.config.ghost
  local native = has('0.12') and vim.lsp.inline_completion ~= nil
  if want == 'native' and not native then
    return 'extmark'
  end
  return (want == 'extmark' or not native) and 'extmark' or 'native'
end

local function notify(msg, level)
  vim.notify('Latent: ' .. msg, level or vim.log.levels.INFO)
end

local function clients(bufnr)
  local get = vim.lsp.get_clients or vim.lsp.get_active_clients
  return get({ name = NAME, bufnr = bufnr })
end
M.clients = clients

local function request(client, method, params, handler, bufnr)
  if has('0.11') then
    return client:request(method, params, handler, bufnr)
  end
  return client.request(method, params, handler, bufnr)
end
M.request = request

local function command(name, arguments, callback)
  local all = clients()
  if #all == 0 then
    notify('the server is not running (open a file of a configured filetype)', vim.log.levels.WARN)
    return
  end
  for _, client in ipairs(all) do
    request(client, 'workspace/executeCommand', { command = name, arguments = arguments },
      function(err, result)
        if err then
          notify(name .. ' failed: ' .. (err.message or vim.inspect(err)), vim.log.levels.ERROR)
        elseif callback then
          callback(result, client)
        end
      end)
  end
end

-- -----------------------------------------------------------------------------------------
-- Setup

local function split_options(opts)
  local config = vim.tbl_deep_extend('force', vim.deepcopy(M.defaults), {})
  local settings = {}
  local known = {}
  for _, name in ipairs(M.server_settings) do
    known[name] = true
  end
  for key, value in pairs(opts or {}) do
    if known[key] then
      settings[key] = value
    elseif M.defaults[key] ~= nil or key == 'cmd_env' then
      if type(value) == 'table' and type(M.defaults[key]) == 'table' and key ~= 'cmd'
          and key ~= 'filetypes' and key ~= 'root_markers' then
        config[key] = vim.tbl_deep_extend('force', config[key], value)
      else
        config[key] = value
      end
    else
      notify(('unknown option %q is ignored'):format(key), vim.log.levels.WARN)
    end
  end
  for key in pairs(config.settings) do
    if not known[key] then
      notify(('unknown server setting %q is ignored'):format(key), vim.log.levels.WARN)
      config.settings[key] = nil
    end
  end
  config.settings = vim.tbl_extend('force', config.settings, settings)
  return config
end

--- Say when the model starts loading and when it is ready, in the server's words ("Loading
--- the model bundled.", "Loaded bundled in 2.1 s."). A failure the server shows itself
--- (window/showMessage).
local function announce(previous, params)
  if not M.config.notify or params.state == previous or type(params.message) ~= 'string' then
    return
  end
  if params.state == 'loading' or (params.state == 'ready' and previous == 'loading') then
    notify(params.message)
  end
end

local function value(v)
  return v ~= nil and v ~= vim.NIL and v or nil
end

local function figure(n, unit)
  return type(n) == 'number' and (string.format('%.0f', n) .. unit) or '?'
end

-- -----------------------------------------------------------------------------------------
-- The latency annotation: "74 ms · 12 tok" after the ghost text (llama.vim's inline info)

local annotation_ns = api.nvim_create_namespace('latent.annotation')

--- The annotation for a completion (the `last` of a latent/status): its latency, and the
--- tokens the model generated or where the answer came from ("cache", "typing-through").
function M.annotation(last)
  if type(last) ~= 'table' or not value(last.latencyMs) or (last.suggestions or 0) == 0 then
    return nil
  end
  local source = last.source == 'model' and ('%d tok'):format(value(last.generatedTokens) or 0) or last.source
  return ('%s · %s'):format(figure(last.latencyMs, ' ms'), source)
end

--- latent.ghost draws the annotation of its own suggestions: the completion that answered
--- the item's request.
local function ghost_annotation(item)
  local s = M.config.annotate and item.client_id and M.servers[item.client_id]
  local last = s and value(s.last)
  if last and last.request == item.request_id then
    return M.annotation(last)
  end
end

-- The built-in renderer (0.12) draws its ghost text itself, over the rest of the line
-- ('overlay'), so an annotation at the end of the line would be hidden: it is drawn right
-- after that ghost text at each redraw (a decoration provider), and only while it is there.
local native_note = nil   -- { bufnr, row, text }: the annotation of the built-in renderer's suggestion

local function clear_annotation()
  native_note = nil
end

--- The window column just after the built-in renderer's ghost text on `row`, if it shows one.
local function after_native_ghost(winid, bufnr, row)
  local ns = api.nvim_get_namespaces()['nvim.lsp.inline_completion']
  if not ns then
    return nil
  end
  local line = api.nvim_buf_get_lines(bufnr, row, row + 1, false)[1] or ''
  for _, mark in ipairs(api.nvim_buf_get_extmarks(bufnr, ns, { row, 0 }, { row, -1 }, { details = true })) do
    local details = mark[4]
    if details.virt_text and #details.virt_text > 0 then
      local ghost = 0
      for _, chunk in ipairs(details.virt_text) do
        ghost = ghost + vim.fn.strdisplaywidth(chunk[1])
      end
      local width = vim.fn.strdisplaywidth(line)
      if details.virt_text_pos == 'inline' then   -- the ghost text pushes the rest of the line right
        width = width + ghost
      else                                        -- 'overlay': drawn over the rest of the line
        width = math.max(width, vim.fn.strdisplaywidth(line:sub(1, mark[3])) + ghost)
      end
      return width - (vim.fn.getwininfo(winid)[1].leftcol or 0)
    end
  end
  return nil
end

local function decorate_native()
  api.nvim_set_decoration_provider(annotation_ns, {
    on_win = function(_, _, bufnr)
      return native_note ~= nil and native_note.bufnr == bufnr
    end,
    on_line = function(_, winid, bufnr, row)
      local note = native_note
      local col = note and note.row == row and after_native_ghost(winid, bufnr, row)
      if col then
        api.nvim_buf_set_extmark(bufnr, annotation_ns, row, 0, {
          virt_text = { { '  ' .. note.text, 'LatentInfo' } }, virt_text_win_col = col, ephemeral = true,
        })
      end
    end,
  })
end

--- A completion was answered (the server's status): on 0.12 its ghost text is the built-in
--- renderer's unless latent.ghost asked for it (which draws its own annotation).
local function annotate_native(client_id, last)
  clear_annotation()
  local bufnr = api.nvim_get_current_buf()
  if not M.config.annotate or M.renderer() ~= 'native' or last.method ~= 'inline'
      or ghost.pending(client_id, last.request) or not api.nvim_get_mode().mode:match('^i') then
    return
  end
  local client = vim.lsp.get_client_by_id(client_id)
  local text = client and client.attached_buffers[bufnr] and M.annotation(last)
  if text then
    native_note = { bufnr = bufnr, row = api.nvim_win_get_cursor(0)[1] - 1, text = text }
  end
end

local function on_status(err, params, ctx)
  if err or type(params) ~= 'table' then
    return
  end
  local previous = M.servers[ctx.client_id]
  M.servers[ctx.client_id] = params
  announce(previous and previous.state, params)
  local last, before = value(params.last), previous and value(previous.last)
  if last and (not before or last.request ~= before.request) then   -- a new completion
    annotate_native(ctx.client_id, last)
  end
  api.nvim_exec_autocmds('User', { pattern = 'LatentStatus', modeline = false })
end

local function capabilities()
  local caps = vim.lsp.protocol.make_client_capabilities()
  caps.textDocument = caps.textDocument or {}
  -- Ghost text is shown either way, so the server need not send completion items too.
  caps.textDocument.inlineCompletion = caps.textDocument.inlineCompletion or { dynamicRegistration = false }
  return caps
end

local function root_dir(bufnr)
  local markers = M.config.root_markers
  if vim.fs.root then
    return vim.fs.root(bufnr, markers) or vim.fn.getcwd()
  end
  local found = vim.fs.find(markers, { upward = true, path = vim.fs.dirname(api.nvim_buf_get_name(bufnr)) })[1]
  return found and vim.fs.dirname(found) or vim.fn.getcwd()
end

--- Whether suggestions come only when asked (the server setting trigger = 'manual').
function M.manual()
  return M.config.settings.trigger == 'manual'
end

--- Hide the built-in renderer's suggestion (0.12), as latent.ghost draws invoked ones.
local function hide_native(bufnr)
  clear_annotation()
  if M.renderer() == 'native' and api.nvim_get_current_buf() == bufnr then
    vim.lsp.inline_completion.get({ on_accept = function() end })
  end
end

--- Ghost text in a buffer. While typing (trigger = 'auto'): the built-in renderer on 0.12+,
--- latent.ghost before. With trigger = 'manual' nothing asks while typing — not even the
--- built-in renderer, turned off for this client in case the user turned it on for all.
--- latent.ghost draws what the keys ask for (trigger, next / previous) either way.
local function attach_ghost(client, bufnr)
  local native = M.renderer() == 'native'
  if native and M.manual() then
    vim.lsp.inline_completion.enable(false, { client_id = client.id })
  elseif native then
    vim.lsp.inline_completion.enable(true, { bufnr = bufnr })
  end
  ghost.attach(bufnr, { automatic = not native and not M.manual() })
end

--- Start (or reuse) the server for a buffer.
function M.start(bufnr)
  bufnr = (bufnr == nil or bufnr == 0) and api.nvim_get_current_buf() or bufnr
  if vim.bo[bufnr].buftype ~= '' then
    return
  end
  local config = M.config
  local settings = config.settings
  return vim.lsp.start({
    name = NAME,
    cmd = config.cmd,
    cmd_env = config.cmd_env,
    root_dir = root_dir(bufnr),
    init_options = settings,
    settings = { latent = settings },
    capabilities = capabilities(),
    handlers = { ['latent/status'] = on_status },
    on_attach = function(client, b)
      attach_ghost(client, b)
    end,
    on_exit = function(_, _, client_id)
      M.servers[client_id] = nil
      vim.schedule(function()
        api.nvim_exec_autocmds('User', { pattern = 'LatentStatus', modeline = false })
      end)
    end,
  }, { bufnr = bufnr })
end

local function map(lhs, fn, fallback, desc)
  if not lhs then
    return
  end
  vim.keymap.set('i', lhs, function()
    if fn() then
      return ''
    end
    return fallback and lhs or ''
  end, { expr = true, replace_keycodes = true, silent = true, desc = 'Latent: ' .. desc })
end

local function set_keymaps()
  local k = M.config.keymaps or {}
  map(k.accept, M.accept, true, 'accept the suggestion')
  map(k.accept_word, M.accept_word, true, 'accept the next word of the suggestion')
  map(k.accept_line, M.accept_line, true, 'accept the next line of the suggestion')
  map(k.next, function() return M.cycle(1) end, true, 'next suggestion')
  map(k.prev, function() return M.cycle(-1) end, true, 'previous suggestion')
  map(k.trigger, M.trigger, true, 'ask for suggestions')
  map(k.dismiss, M.dismiss, true, 'dismiss the suggestion')
end

--- Whether a highlight group (its links followed) changes how text looks in a terminal
--- without 'termguicolors'.
local function has_terminal_style(name)
  local hl = api.nvim_get_hl(0, { name = name, link = false })
  return hl.ctermfg ~= nil or hl.ctermbg ~= nil or (hl.cterm ~= nil and next(hl.cterm) ~= nil)
end

--- LatentGhost: grey in 256-colour and true-colour terminals alike (Neovim's default scheme
--- gives Comment and NonText no terminal colour); a colour scheme or `:hi LatentGhost`
--- overrides it. The built-in renderer (0.12) draws with ComplHint: without 'termguicolors'
--- and without a terminal colour of its own it would look like typed code, so it links to
--- LatentGhost then.
function M.highlights()
  api.nvim_set_hl(0, 'LatentGhost', { fg = '#808080', ctermfg = 244, italic = true, default = true })
  api.nvim_set_hl(0, 'LatentInfo', { link = 'LatentGhost', default = true })
  if M.renderer() == 'native' and not vim.o.termguicolors and not has_terminal_style('ComplHint') then
    api.nvim_set_hl(0, 'ComplHint', { link = 'LatentGhost' })
  end
end

--- `:help latent` needs doc/tags beside doc/latent.txt: it ships with the plugin; write it if a
--- copy lacks it (or it is older than the help file) and the folder is writable.
local function help_tags()
  local doc = vim.fs.dirname(vim.fs.dirname(vim.fs.dirname(debug.getinfo(1, 'S').source:sub(2)))) .. '/doc'
  local help, tags = vim.uv.fs_stat(doc .. '/latent.txt'), vim.uv.fs_stat(doc .. '/tags')
  if help and (not tags or tags.mtime.sec < help.mtime.sec) then
    pcall(vim.cmd.helptags, vim.fn.fnameescape(doc))
  end
end

function M.setup(opts)
  if not has('0.10') then
    notify('Neovim 0.10 or newer is needed', vim.log.levels.ERROR)
    return
  end
  M.config = split_options(opts)
  ghost.setup({ annotation = ghost_annotation, on_invoked = hide_native })
  decorate_native()
  help_tags()
  local group = api.nvim_create_augroup('latent', { clear = true })
  M.highlights()
  api.nvim_create_autocmd('ColorScheme', { group = group, callback = M.highlights })
  api.nvim_create_autocmd('OptionSet', { group = group, pattern = 'termguicolors', callback = M.highlights })
  -- the built-in renderer's annotation belongs to the text and cursor it was answered for
  api.nvim_create_autocmd({ 'TextChangedI', 'CursorMovedI', 'InsertLeave' }, {
    group = group, callback = clear_annotation,
  })
  api.nvim_create_autocmd('FileType', {
    group = group,
    pattern = M.config.filetypes,
    callback = function(ev) M.start(ev.buf) end,
  })
  set_keymaps()
  local wanted = {}
  for _, ft in ipairs(M.config.filetypes) do
    wanted[ft] = true
  end
  for _, bufnr in ipairs(api.nvim_list_bufs()) do
    if api.nvim_buf_is_loaded(bufnr) and wanted[vim.bo[bufnr].filetype] then
      M.start(bufnr)
    end
  end
end

-- -----------------------------------------------------------------------------------------
-- Suggestions: accept, accept word / line, cycle, dismiss

--- The text of a native item that lies after the cursor (what the ghost text shows).
local function native_rest(item, bufnr)
  local text = type(item.insert_text) == 'string' and item.insert_text or item.insert_text.value
  local row, col = unpack(api.nvim_win_get_cursor(0))
  row = row - 1
  if item.range and item.range.start.row == row and item.range.start.col <= col then
    local typed = api.nvim_buf_get_lines(bufnr, row, row + 1, true)[1]:sub(item.range.start.col + 1, col)
    if text:sub(1, #typed) == typed then
      text = text:sub(#typed + 1)
    end
  end
  return text
end

local function accept_part(cut)
  if M.renderer() == 'native' and not ghost.visible() then
    local bufnr = api.nvim_get_current_buf()
    return vim.lsp.inline_completion.get({
      on_accept = function(item)
        ghost.insert_at_cursor(cut(native_rest(item, bufnr)))
      end,
    })
  end
  return ghost.accept_part(cut)
end

--- Accept the whole suggestion; false when there is none.
function M.accept()
  if M.renderer() == 'native' and not ghost.visible() then
    return vim.lsp.inline_completion.get()
  end
  return ghost.accept()
end

function M.accept_word()
  return accept_part(ghost.next_word)
end

function M.accept_line()
  return accept_part(ghost.next_line)
end

--- Show the next (`count` 1) or previous (-1) suggestion. The server sends one while the
--- user types, so the first press asks it for several (triggerKind Invoked) and shows the
--- second (or, going back, the last); the built-in renderer's one gives way to them.
function M.cycle(count)
  return ghost.cycle(count)
end

--- Ask for suggestions now (Invoked: several, best first), with trigger = 'auto' or 'manual';
--- false when no Latent server serves the buffer.
function M.trigger()
  return ghost.invoke(0)
end

--- Hide the suggestion; false when there is none.
function M.dismiss()
  clear_annotation()
  if ghost.dismiss() then
    return true
  end
  return M.renderer() == 'native' and vim.lsp.inline_completion.get({ on_accept = function() end })
end

-- -----------------------------------------------------------------------------------------
-- Commands

local function clock(unix)
  return os.date('%H:%M', math.floor(unix))
end

local function toggled(result)
  local on = type(result) == 'table' and result.enabled
  if not on then
    M.dismiss()
    ghost.clear_all()
  end
  local snoozed = type(result) == 'table' and value(result.snoozedUntil)
  notify('completion is ' .. (on and 'on' or snoozed and ('snoozed until ' .. clock(snoozed)) or 'off'))
end

--- Turn completion off or on in the server (`enabled` nil flips it; on after a snooze).
function M.toggle(enabled)
  command('latent.toggle', enabled == nil and {} or { enabled }, toggled)
end

--- Turn completion off for `minutes` (default config.snooze_minutes); the server turns it on
--- again by itself then.
function M.snooze(minutes)
  minutes = minutes or M.config.snooze_minutes
  if type(minutes) ~= 'number' or minutes <= 0 or minutes > 1440 then
    notify('a snooze lasts more than 0 and at most 1440 minutes', vim.log.levels.ERROR)
    return
  end
  command('latent.toggle', { false, minutes }, toggled)
end

--- The last status of the server of a buffer (the current one by default), else of any.
local function server(bufnr)
  bufnr = (bufnr == nil or bufnr == 0) and api.nvim_get_current_buf() or bufnr
  for _, client in ipairs(clients(bufnr)) do
    if M.servers[client.id] then
      return M.servers[client.id]
    end
  end
  return select(2, next(M.servers))
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
    return { state = #clients() > 0 and 'starting' or 'stopped', model = '' }
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

--- What :LatentStatus prints: "Latent: ready, model bundled", then the last completion
--- and the cache.
function M.status_lines()
  local lines = {}
  local several = vim.tbl_count(M.servers) > 1
  for id, s in pairs(M.servers) do
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
    lines = { #clients() > 0 and 'Latent: starting' or 'Latent: not running (open a file of a configured filetype)' }
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

function M.show_status(all)
  if not all then
    api.nvim_echo({ { table.concat(M.status_lines(), '\n') } }, true, {})
    return
  end
  command('latent.stats', {}, function(result, client)
    local lines = { ('Latent statistics (client %d); q closes'):format(client.id), '' }
    vim.list_extend(lines, M.figure_lines(type(result) == 'table' and result or {}))
    scratch(('latent://statistics/%d'):format(client.id), lines)
  end)
end

function M.restart()
  local buffers = {}
  for _, client in ipairs(clients()) do
    for bufnr in pairs(client.attached_buffers or {}) do
      buffers[bufnr] = true
    end
    if has('0.11') then
      client:stop()
    else
      client.stop()
    end
  end
  ghost.clear_all()
  vim.defer_fn(function()
    for bufnr in pairs(buffers) do
      if api.nvim_buf_is_valid(bufnr) then
        M.start(bufnr)
      end
    end
  end, 500)
end

return M
