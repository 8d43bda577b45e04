-- The latency annotation: "74 ms · 12 tok" after the ghost text (llama.vim's inline info),
-- the text of latent.status's annotation(). latent.ghost draws it after its own suggestions;
-- after the built-in renderer's (Neovim 0.12) this module draws it.
local M = {}

local api = vim.api
local ghost = require('latent.ghost')
local status = require('latent.status')

-- latent (init.lua) requires this module while it loads: it is looked up when used.
local function latent()
  return require('latent')
end

local ns = api.nvim_create_namespace('latent.annotation')

--- latent.ghost draws the annotation of its own suggestions: the completion that answered
--- the item's request.
function M.for_ghost(item)
  local s = latent().config.annotate and item.client_id and latent().servers[item.client_id]
  local last = s and status.value(s.last)
  if last and last.request == item.request_id then
    return status.annotation(last)
  end
end

-- The built-in renderer (0.12) draws its ghost text itself, over the rest of the line
-- ('overlay'), so an annotation at the end of the line would be hidden: it is drawn right
-- after that ghost text at each redraw (a decoration provider), and only while it is there.
local native_note = nil   -- { bufnr, row, text }: the annotation of the built-in renderer's suggestion

--- Forget the built-in renderer's annotation (its text or cursor changed, it was hidden).
function M.clear()
  native_note = nil
end

--- The window column just after the built-in renderer's ghost text on `row`, if it shows one.
local function after_native_ghost(winid, bufnr, row)
  local inline_ns = api.nvim_get_namespaces()['nvim.lsp.inline_completion']
  if not inline_ns then
    return nil
  end
  local line = api.nvim_buf_get_lines(bufnr, row, row + 1, false)[1] or ''
  for _, mark in ipairs(api.nvim_buf_get_extmarks(bufnr, inline_ns, { row, 0 }, { row, -1 }, { details = true })) do
    local details = mark[4]
    if details.virt_text and #details.virt_text > 0 then
      local shown = 0
      for _, chunk in ipairs(details.virt_text) do
        shown = shown + vim.fn.strdisplaywidth(chunk[1])
      end
      local width = vim.fn.strdisplaywidth(line)
      if details.virt_text_pos == 'inline' then   -- the ghost text pushes the rest of the line right
        width = width + shown
      else                                        -- 'overlay': drawn over the rest of the line
        width = math.max(width, vim.fn.strdisplaywidth(line:sub(1, mark[3])) + shown)
      end
      return width - (vim.fn.getwininfo(winid)[1].leftcol or 0)
    end
  end
  return nil
end

--- Draw the built-in renderer's annotation at each redraw (setup() calls this once).
function M.setup()
  api.nvim_set_decoration_provider(ns, {
    on_win = function(_, _, bufnr)
      return native_note ~= nil and native_note.bufnr == bufnr
    end,
    on_line = function(_, winid, bufnr, row)
      local note = native_note
      local col = note and note.row == row and after_native_ghost(winid, bufnr, row)
      if col then
        api.nvim_buf_set_extmark(bufnr, ns, row, 0, {
          virt_text = { { '  ' .. note.text, 'LatentInfo' } }, virt_text_win_col = col, ephemeral = true,
        })
      end
    end,
  })
end

--- A completion was answered (the server's status): on 0.12 its ghost text is the built-in
--- renderer's unless latent.ghost asked for it (which draws its own annotation).
function M.native(client_id, last)
  M.clear()
  local bufnr = api.nvim_get_current_buf()
  if not latent().config.annotate or latent().renderer() ~= 'native' or last.method ~= 'inline'
      or ghost.pending(client_id, last.request) or not api.nvim_get_mode().mode:match('^i') then
    return
  end
  local client = vim.lsp.get_client_by_id(client_id)
  local text = client and client.attached_buffers[bufnr] and status.annotation(last)
  if text then
    native_note = { bufnr = bufnr, row = api.nvim_win_get_cursor(0)[1] - 1, text = text }
  end
end

return M
