-- :checkhealth latent
local M = {}

local api = vim.api
local health = vim.health

function M.check()
  local latent = require('latent')
  health.start('latent: Neovim')
  if vim.fn.has('nvim-0.10') == 1 then
    health.ok(('Neovim %s'):format(tostring(vim.version())))
  else
    health.error('Neovim 0.10 or newer is needed', { 'Upgrade Neovim.' })
  end
  if latent.manual() then
    local key = (latent.config.keymaps or {}).trigger
    health.ok(('trigger = manual: no suggestion while typing; ask with %s'):format(key or "require('latent').trigger()"))
  elseif latent.renderer() == 'native' then
    health.ok('ghost text while typing: vim.lsp.inline_completion (built in)')
  else
    health.ok('ghost text while typing: latent extmark renderer' ..
      (vim.fn.has('nvim-0.12') == 1 and ' (ghost = "extmark")' or ' (Neovim < 0.12)'))
  end

  health.start('latent: help and highlights')
  for _, help in ipairs(api.nvim_get_runtime_file('doc/latent.txt', true)) do
    local tags = vim.fs.dirname(help) .. '/tags'
    if vim.uv.fs_stat(tags) then
      health.ok('help tags: ' .. tags)
    else
      health.warn('help tags missing: ' .. tags .. ' (:help latent fails)',
        { (':helptags %s'):format(vim.fs.dirname(help)) })
    end
  end
  local hl = latent.renderer() == 'native' and not latent.manual() and 'ComplHint' or 'LatentGhost'
  local style = api.nvim_get_hl(0, { name = hl, link = false })
  if vim.o.termguicolors or style.ctermfg or (style.cterm and next(style.cterm)) then
    health.ok(('ghost text is drawn with %s'):format(hl))
  else
    health.warn(('%s has no terminal colour: ghost text looks like code'):format(hl),
      { ('Give %s a ctermfg in your colour scheme, or set termguicolors.'):format(hl) })
  end

  health.start('latent: server')
  local cmd = latent.config.cmd or {}
  local exe = cmd[1]
  if not exe or vim.fn.executable(exe) ~= 1 then
    health.error(('the server command %q is not executable'):format(tostring(exe)), {
      'Install Latent (`pip install -e .` in its repository) so that `latent` is on PATH,',
      "or set cmd = { '/path/to/.venv/bin/latent', 'lsp' } in require('latent').setup{}.",
    })
  else
    local version_cmd = vim.deepcopy(cmd)
    if version_cmd[#version_cmd] == 'lsp' then
      version_cmd[#version_cmd] = '--version'
    end
    local out = vim.fn.system(version_cmd)
    if vim.v.shell_error == 0 then
      health.ok(('%s (%s)'):format(vim.trim(out), vim.fn.exepath(exe)))
    else
      health.warn(('`%s` failed: %s'):format(table.concat(version_cmd, ' '), vim.trim(out)))
    end
  end

  local clients = latent.clients()
  if #clients == 0 then
    health.info('no server is running: it starts when a buffer of these filetypes opens: '
      .. table.concat(latent.config.filetypes, ', '))
  end
  for _, client in ipairs(clients) do
    local s = latent.servers[client.id]
    local caps = client.server_capabilities or {}
    if caps.inlineCompletionProvider then
      health.ok(('client %d attached; the server offers inline completions'):format(client.id))
    else
      health.error(('client %d: the server does not offer inline completions'):format(client.id))
    end
    if not s then
      health.info('no latent/status from the server yet')
    elseif s.state == 'ready' then
      health.ok(('model %s ready%s'):format(s.model or '?', s.enabled == false and ' (completion is off: :LatentToggle)' or ''))
    elseif s.state == 'loading' then
      health.info(('model %s is loading'):format(s.model or '?'))
    else
      health.error(('model %s: %s'):format(s.model or '?', s.message or s.state or '?'),
        { "Set `model` in require('latent').setup{} to a checkpoint folder, or run `latent train`." })
    end
  end
end

return M
