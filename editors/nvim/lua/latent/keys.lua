-- Suggestions and their keys: accept (whole, a word, a line), cycle, trigger, dismiss — each
-- on whichever renderer shows the suggestion (latent.ghost, or the built-in one on 0.12) —
-- and the insert-mode keymaps of config.keymaps.
local M = {}

local api = vim.api
local ghost = require('latent.ghost')
local annotation = require('latent.annotation')

-- latent (init.lua) requires this module while it loads: it is looked up when used.
local function latent()
  return require('latent')
end

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
  if latent().renderer() == 'native' and not ghost.visible() then
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
  if latent().renderer() == 'native' and not ghost.visible() then
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
  annotation.clear()
  if ghost.dismiss() then
    return true
  end
  return latent().renderer() == 'native' and vim.lsp.inline_completion.get({ on_accept = function() end })
end

-- -----------------------------------------------------------------------------------------
-- Keymaps

--- An insert-mode key that runs `fn`, and types itself (`fallback`) when `fn` did nothing.
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

--- Map the keys of `keymaps` (config.keymaps; false turns one off).
function M.set_keymaps(keymaps)
  local k = keymaps or {}
  map(k.accept, M.accept, true, 'accept the suggestion')
  map(k.accept_word, M.accept_word, true, 'accept the next word of the suggestion')
  map(k.accept_line, M.accept_line, true, 'accept the next line of the suggestion')
  map(k.next, function() return M.cycle(1) end, true, 'next suggestion')
  map(k.prev, function() return M.cycle(-1) end, true, 'previous suggestion')
  map(k.trigger, M.trigger, true, 'ask for suggestions')
  map(k.dismiss, M.dismiss, true, 'dismiss the suggestion')
end

return M
