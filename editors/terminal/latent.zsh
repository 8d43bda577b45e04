# Latent for zsh: a key completes the command line in place with `latent complete`.
#
#   source /path/to/latent/editors/terminal/latent.zsh      # in ~/.zshrc
#
# Ctrl-Space (default) inserts the model's suggestion at the cursor. Set before sourcing:
#   LATENT_KEY='^ '           the key, in `bindkey` notation
#   LATENT_COMMAND=latent     the latent command (e.g. /path/to/.venv/bin/latent)
#   LATENT_HISTORY_LINES=20   recent history lines given to the model as context (0: none)
# Settings such as LATENT_MODEL are read by `latent` itself.

_latent_complete() {
  emulate -L zsh
  local before=$LBUFFER n=${LATENT_HISTORY_LINES:-20} context='' lines=0 suggestion
  if (( n > 0 )); then
    context=$(fc -ln -$n 2>/dev/null)
    [[ -n $context ]] && context+=$'\n' && lines=${#${(f)context}}
  fi
  zle -R 'latent…'
  suggestion=$(print -rn -- "$context$BUFFER" |
    ${LATENT_COMMAND:-latent} complete --stdin --language bash --at "$((lines + 1)):$(( ${#before} + 1 ))" 2>/dev/null)
  suggestion=${suggestion%%$'\n'*}
  zle -R
  [[ -n $suggestion ]] || return 0
  LBUFFER+=$suggestion
}

zle -N _latent_complete
bindkey "${LATENT_KEY:-^ }" _latent_complete
