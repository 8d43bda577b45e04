-- Ghost text drawn with extmarks — virtual text for a suggestion's first line, virtual lines
-- for the rest — and the requests behind it:
--   automatic  Neovim 0.10 / 0.11 with trigger = 'auto': ask the server
--              (textDocument/inlineCompletion, Automatic) after the keystrokes of one turn
--              of the event loop; the server waits its debounce_ms and drops superseded ones;
--   invoked    every version: the trigger key and cycling ask with triggerKind Invoked, and
--              the server answers with several suggestions, best first.
-- On 0.12+ the built-in vim.lsp.inline_completion draws automatic suggestions; this module
-- draws the invoked ones there, and gives it the text helpers.
local M = {}

local api = vim.api
local ns = api.nvim_create_namespace('latent.ghost')
local INLINE = 'textDocument/inlineCompletion'
local INVOKED, AUTOMATIC = 1, 2 -- InlineCompletionTriggerKind

M.ns = ns
local opts = {
  annotation = function(item) return nil end, -- the text drawn after a suggestion (latency), or nil
  on_invoked = function(bufnr) end,           -- invoked suggestions arrived and are about to be drawn
}
-- bufnr -> { items, index, invoked, shown, pending = {client id -> request id}, queued, automatic }
local buffers = {}

function M.setup(o)
  opts = vim.tbl_extend('force', opts, o or {})
end

-- -----------------------------------------------------------------------------------------
-- Text helpers (shared with the native renderer)

--- The next word of a suggestion: leading blanks, then a run of word characters or of
--- other non-blank characters (the way Ctrl-Right moves); a line break alone if it starts so.
function M.next_word(text)
  if text:sub(1, 1) == '\n' then
    return '\n'
  end
  return text:match('^[ \t]*[%w_]+') or text:match('^[ \t]*[^%w_%s]+') or text:match('^[ \t]+') or text
end

--- The rest of the current line of a suggestion, or the next line when it starts with a break.
function M.next_line(text)
  local line = text:match('^([^\n]*)')
  if line == '' then
    return text:match('^(\n[^\n]*)') or text
  end
  return line
end

--- Insert text at the cursor and put the cursor after it (insert mode).
function M.insert_at_cursor(text)
  if text == nil or text == '' then
    return
  end
  local row, col = unpack(api.nvim_win_get_cursor(0))
  local lines = vim.split(text, '\n', { plain = true })
  api.nvim_buf_set_text(0, row - 1, col, row - 1, col, lines)
  local last = #lines == 1 and col + #lines[1] or #lines[#lines]
  api.nvim_win_set_cursor(0, { row + #lines - 1, last })
end

-- -----------------------------------------------------------------------------------------
-- Positions

local function byte_col(bufnr, row, character, encoding)
  local line = api.nvim_buf_get_lines(bufnr, row, row + 1, false)[1] or ''
  if encoding == 'utf-8' then
    return math.min(character, #line)
  end
  local ok, col
  if vim.fn.has('nvim-0.11') == 1 then
    ok, col = pcall(vim.str_byteindex, line, encoding, character, false)
  else
    ok, col = pcall(vim.str_byteindex, line, character, encoding == 'utf-16')
  end
  return ok and col or #line
end

local function to_item(raw, client, bufnr, request_id)
  local text = raw.insertText
  if type(text) == 'table' then
    text = text.value -- a snippet: shown and inserted as its plain text
  end
  if type(text) ~= 'string' or text == '' then
    return nil
  end
  local item = { text = text, command = raw.command, client_id = client.id, request_id = request_id }
  if raw.range then
    local s, e = raw.range.start, raw.range['end']
    item.range = {
      s.line, byte_col(bufnr, s.line, s.character, client.offset_encoding),
      e.line, byte_col(bufnr, e.line, e.character, client.offset_encoding),
    }
  end
  return item
end

--- The part of an item that lies after the cursor (row, col: 0-based, bytes).
local function rest_of(item, bufnr, row, col)
  local text = item.text
  local r = item.range
  if r and r[1] == row and r[2] <= col then
    local typed = (api.nvim_buf_get_lines(bufnr, row, row + 1, false)[1] or ''):sub(r[2] + 1, col)
    if text:sub(1, #typed) ~= typed then
      return nil -- the suggestion no longer fits what is typed
    end
    text = text:sub(#typed + 1)
  end
  return text ~= '' and text or nil
end

-- -----------------------------------------------------------------------------------------
-- State and drawing

local function state(bufnr)
  local s = buffers[bufnr]
  if not s then
    s = { items = {}, index = 1, pending = {} }
    buffers[bufnr] = s
  end
  return s
end

local function cursor()
  local row, col = unpack(api.nvim_win_get_cursor(0))
  return row - 1, col
end

function M.clear(bufnr)
  bufnr = bufnr or api.nvim_get_current_buf()
  if api.nvim_buf_is_valid(bufnr) then
    api.nvim_buf_clear_namespace(bufnr, ns, 0, -1)
  end
  local s = buffers[bufnr]
  if s then
    s.items, s.index, s.invoked, s.shown = {}, 1, false, nil
  end
end

function M.clear_all()
  for bufnr in pairs(buffers) do
    M.clear(bufnr)
  end
end

local function draw(bufnr)
  api.nvim_buf_clear_namespace(bufnr, ns, 0, -1)
  local s = state(bufnr)
  s.shown = nil
  local item = s.items[s.index]
  if not item or api.nvim_get_current_buf() ~= bufnr or not api.nvim_get_mode().mode:match('^i') then
    return
  end
  local row, col = cursor()
  local rest = rest_of(item, bufnr, row, col)
  if not rest then
    return
  end
  local lines = vim.split(rest, '\n', { plain = true })
  local first = { { lines[1], 'LatentGhost' } }
  local virt_lines = {}
  for i = 2, #lines do
    virt_lines[#virt_lines + 1] = { { lines[i], 'LatentGhost' } }
  end
  -- after the suggestion's last line: its place among several, then the latency
  local last = #virt_lines > 0 and virt_lines[#virt_lines] or first
  if #s.items > 1 then
    last[#last + 1] = { (' (%d/%d)'):format(s.index, #s.items), 'LatentGhost' }
  end
  local note = opts.annotation(item)
  if note then
    last[#last + 1] = { '  ' .. note, 'LatentInfo' }
  end
  api.nvim_buf_set_extmark(bufnr, ns, row, col, {
    virt_text = first,
    virt_text_pos = 'inline',
    virt_lines = #virt_lines > 0 and virt_lines or nil,
    hl_mode = 'combine',
  })
  s.shown = { row = row, col = col, tick = api.nvim_buf_get_changedtick(bufnr), rest = rest, item = item }
end

--- The suggestion on screen now, if it still belongs where the cursor is.
local function shown(bufnr)
  local s = buffers[bufnr]
  local v = s and s.shown
  if not v then
    return nil
  end
  local row, col = cursor()
  if v.row ~= row or v.col ~= col or v.tick ~= api.nvim_buf_get_changedtick(bufnr) then
    return nil
  end
  return v
end

function M.visible(bufnr)
  return shown(bufnr or api.nvim_get_current_buf()) ~= nil
end

-- -----------------------------------------------------------------------------------------
-- Requests

local function cancel_pending(bufnr)
  local s = state(bufnr)
  for client_id, id in pairs(s.pending) do
    local client = vim.lsp.get_client_by_id(client_id)
    if client then
      pcall(function()
        if vim.fn.has('nvim-0.11') == 1 then client:cancel_request(id) else client.cancel_request(id) end
      end)
    end
  end
  s.pending = {}
end

--- Whether request `id` of a client is one of this module's, still unanswered.
function M.pending(client_id, id)
  for _, s in pairs(buffers) do
    if s.pending[client_id] == id then
      return true
    end
  end
  return false
end

--- Ask the buffer's Latent servers for suggestions at the cursor. Automatic: ghost text
--- while typing (one suggestion). Invoked: several; show the one `step` places after the
--- best (0: the best; 1: the second, as the first press of "next" does; -1: the last).
local function request(bufnr, kind, step)
  if not api.nvim_buf_is_valid(bufnr) or api.nvim_get_current_buf() ~= bufnr
      or not api.nvim_get_mode().mode:match('^i') then
    return
  end
  cancel_pending(bufnr)
  local s = state(bufnr)
  local tick = api.nvim_buf_get_changedtick(bufnr)
  local row, col = cursor()
  local latent = require('latent')
  for _, client in ipairs(latent.clients(bufnr)) do
    local params = vim.lsp.util.make_position_params(0, client.offset_encoding)
    params.context = { triggerKind = kind }
    local ok, id   -- declared first: the handler below compares its own id with the pending one
    ok, id = latent.request(client, INLINE, params, function(err, result)
      if s.pending[client.id] == id then
        s.pending[client.id] = nil
      end
      if err or not result or api.nvim_buf_get_changedtick(bufnr) ~= tick then
        return
      end
      local r, c = cursor()
      if r ~= row or c ~= col then
        return
      end
      local items = {}
      for _, raw in ipairs(result.items or result) do
        items[#items + 1] = to_item(raw, client, bufnr, id)
      end
      s.items, s.index, s.invoked = items, 1, kind == INVOKED
      if kind == INVOKED and #items > 0 then
        s.index = step % #items + 1
        opts.on_invoked(bufnr)
      end
      draw(bufnr)
    end, bufnr)
    if ok then
      s.pending[client.id] = id
    end
  end
end

--- Automatic requests: the events of one keystroke (TextChangedI, CursorMovedI) make one.
local function queue_request(bufnr)
  local s = state(bufnr)
  if s.queued then
    return
  end
  s.queued = true
  vim.schedule(function()
    s.queued = false
    request(bufnr, AUTOMATIC)
  end)
end

--- Draw ghost text in a buffer; with `automatic`, ask for it as the user types. Either way
--- a suggestion goes when the text or the cursor moves, and on leaving insert mode.
function M.attach(bufnr, o)
  local s = state(bufnr)
  s.automatic = not o or o.automatic ~= false
  if s.attached then
    return
  end
  s.attached = true
  local group = api.nvim_create_augroup('latent.ghost.' .. bufnr, { clear = true })
  api.nvim_create_autocmd({ 'InsertEnter', 'TextChangedI', 'CursorMovedI' }, {
    group = group,
    buffer = bufnr,
    callback = function()
      if shown(bufnr) then
        return
      end
      if s.shown or next(s.pending) then
        cancel_pending(bufnr)
        M.clear(bufnr)
      end
      if s.automatic then
        queue_request(bufnr)
      end
    end,
  })
  api.nvim_create_autocmd({ 'InsertLeave', 'BufLeave' }, {
    group = group,
    buffer = bufnr,
    callback = function()
      cancel_pending(bufnr)
      M.clear(bufnr)
    end,
  })
  api.nvim_create_autocmd('BufWipeout', {
    group = group,
    buffer = bufnr,
    callback = function()
      cancel_pending(bufnr)
      buffers[bufnr] = nil
      pcall(api.nvim_del_augroup_by_id, group)
    end,
  })
end

-- -----------------------------------------------------------------------------------------
-- Keys (each returns false when there is nothing to do, so the key does what it would)

local function run_command(item, bufnr)
  local client = item.command and vim.lsp.get_client_by_id(item.client_id)
  if client then
    require('latent').request(client, 'workspace/executeCommand', {
      command = item.command.command, arguments = item.command.arguments,
    }, function() end, bufnr)
  end
end

function M.accept()
  local bufnr = api.nvim_get_current_buf()
  local v = shown(bufnr)
  if not v then
    return false
  end
  vim.schedule(function()
    M.clear(bufnr)
    local item = v.item
    local r = item.range
    if r then
      local lines = vim.split(item.text, '\n', { plain = true })
      api.nvim_buf_set_text(bufnr, r[1], r[2], r[3], r[4], lines)
      local last = #lines == 1 and r[2] + #lines[1] or #lines[#lines]
      api.nvim_win_set_cursor(0, { r[1] + #lines, last })
    else
      M.insert_at_cursor(item.text)
    end
    run_command(item, bufnr)
  end)
  return true
end

function M.accept_part(cut)
  local bufnr = api.nvim_get_current_buf()
  local v = shown(bufnr)
  if not v then
    return false
  end
  vim.schedule(function()
    M.clear(bufnr)
    M.insert_at_cursor(cut(v.rest))
  end)
  return true
end

--- Ask for several suggestions now (Invoked) and show the one `step` places after the best;
--- false when no Latent server serves the buffer.
function M.invoke(step)
  local bufnr = api.nvim_get_current_buf()
  if #require('latent').clients(bufnr) == 0 then
    return false
  end
  vim.schedule(function() request(bufnr, INVOKED, step or 0) end)
  return true
end

--- Show the next (`count` 1) or previous (-1) suggestion. The first press over a single
--- suggestion — or over none — asks the server for several (Invoked).
function M.cycle(count)
  local bufnr = api.nvim_get_current_buf()
  local s = buffers[bufnr]
  if not shown(bufnr) or (#s.items < 2 and not s.invoked) then
    return M.invoke(count)
  end
  s.index = (s.index - 1 + count) % #s.items + 1
  vim.schedule(function() draw(bufnr) end)
  return true
end

function M.dismiss()
  local bufnr = api.nvim_get_current_buf()
  if not shown(bufnr) then
    return false
  end
  cancel_pending(bufnr)
  M.clear(bufnr)
  return true
end

--- Draw a suggestion without a server (tests and :help examples): text at the cursor.
function M.show(text, bufnr)
  bufnr = bufnr or api.nvim_get_current_buf()
  local s = state(bufnr)
  s.items, s.index = { { text = text } }, 1
  draw(bufnr)
end

return M
