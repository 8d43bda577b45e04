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

vim.api.nvim_create_user_command('LatentStatus', function(args)
  require('latent').show_status(args.bang)
end, { bang = true, desc = 'Latent: the server state, model, last latency and cache (! for all figures)' })

vim.api.nvim_create_user_command('LatentRestart', function()
  require('latent').restart()
end, { desc = 'Latent: restart the language server' })
