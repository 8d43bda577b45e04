-- Latent for Neovim: starts `latent lsp` with the built-in client and shows its inline
-- completions as ghost text — while typing through vim.lsp.inline_completion on Neovim 0.12+
-- and through latent.ghost (extmarks) on 0.10 / 0.11; the suggestions asked for with a key
-- (trigger, next / previous) through latent.ghost everywhere. See :help latent.
--
-- This file: the options and setup(), starting the server, and the public API. The rest:
--   latent.keys        accept / accept word / line, cycle, trigger, dismiss, and their keymaps
--   latent.status      the latent/status notification, status(), statusline(), :LatentStatus
--   latent.annotation  the latency after the ghost text ("74 ms · 12 tok")
--   latent.ghost       the extmark renderer and the requests it draws
--   latent.health      :checkhealth latent
local M = {}

local api = vim.api
local ghost = require('latent.ghost')
local status = require('latent.status')
local annotation = require('latent.annotation')
local keys = require('latent.keys')

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
M.notify = notify                 -- also latent.status's

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

--- Run a server command (workspace/executeCommand) in every Latent server; `callback`
--- gets each one's result and client, an error is shown.
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
M.command = command               -- also latent.status's (:LatentStatus!)

-- -----------------------------------------------------------------------------------------
-- Options and the server

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
  annotation.clear()
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
    handlers = { ['latent/status'] = status.on_status },
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

-- -----------------------------------------------------------------------------------------
-- Highlights and help

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

-- -----------------------------------------------------------------------------------------
-- Setup

function M.setup(opts)
  if not has('0.10') then
    notify('Neovim 0.10 or newer is needed', vim.log.levels.ERROR)
    return
  end
  M.config = split_options(opts)
  ghost.setup({ annotation = annotation.for_ghost, on_invoked = hide_native })
  annotation.setup()
  help_tags()
  local group = api.nvim_create_augroup('latent', { clear = true })
  M.highlights()
  api.nvim_create_autocmd('ColorScheme', { group = group, callback = M.highlights })
  api.nvim_create_autocmd('OptionSet', { group = group, pattern = 'termguicolors', callback = M.highlights })
  -- the built-in renderer's annotation belongs to the text and cursor it was answered for
  api.nvim_create_autocmd({ 'TextChangedI', 'CursorMovedI', 'InsertLeave' }, {
    group = group, callback = annotation.clear,
  })
  api.nvim_create_autocmd('FileType', {
    group = group,
    pattern = M.config.filetypes,
    callback = function(ev) M.start(ev.buf) end,
  })
  keys.set_keymaps(M.config.keymaps)
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
-- Suggestions (latent.keys): accept, accept word / line, cycle, trigger, dismiss

M.accept = keys.accept            -- the whole suggestion; false when there is none
M.accept_word = keys.accept_word
M.accept_line = keys.accept_line
M.cycle = keys.cycle              -- next (1) or previous (-1) suggestion
M.trigger = keys.trigger          -- ask for suggestions now; false when no server serves the buffer
M.dismiss = keys.dismiss          -- hide the suggestion; false when there is none

-- -----------------------------------------------------------------------------------------
-- Status (latent.status): status(), statusline(), :LatentStatus

M.status = status.status          -- Latent's state for a status line (a table)
M.statusline = status.statusline  -- "Latent 12 ms", "Latent loading", ...
M.status_lines = status.status_lines
M.figure_lines = status.figure_lines
M.show_status = status.show_status
M.annotation = status.annotation  -- "74 ms · 12 tok" for the `last` of a latent/status

-- -----------------------------------------------------------------------------------------
-- Commands

local function toggled(result)
  local on = type(result) == 'table' and result.enabled
  if not on then
    M.dismiss()
    ghost.clear_all()
  end
  local snoozed = type(result) == 'table' and status.value(result.snoozedUntil)
  notify('completion is ' .. (on and 'on' or snoozed and ('snoozed until ' .. status.clock(snoozed)) or 'off'))
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
