-- Latent: commands only. Nothing starts until require('latent').setup{} is called.
if vim.g.loaded_latent then
  return
end
vim.g.loaded_latent = true

vim.api.nvim_create_user_command('LatentToggle', function(args)
  local arg = args.args ~= '' and (args.args == 'on') or nil
  require('latent').toggle(arg)
end, { nargs = '?', complete = function() return { 'on', 'off' } end,
       desc = 'Latent: turn completion off or on (on / off sets it)' })

vim.api.nvim_create_user_command('LatentSnooze', function(args)
  local minutes = args.args ~= '' and tonumber(args.args) or nil
  if args.args ~= '' and not minutes then
    vim.notify('Latent: :LatentSnooze takes a number of minutes', vim.log.levels.ERROR)
    return
  end
  require('latent').snooze(minutes)
end, { nargs = '?', desc = 'Latent: turn completion off for a while (minutes; default 15)' })

vim.api.nvim_create_user_command('LatentStatus', function(args)
  require('latent').show_status(args.bang)
end, { bang = true, desc = 'Latent: the server state, model, last latency and cache (! for all figures)' })

vim.api.nvim_create_user_command('LatentRestart', function()
  require('latent').restart()
end, { desc = 'Latent: restart the language server' })
