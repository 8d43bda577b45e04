# Latent for bash: a key completes the command line in place with `latent complete`.
#
#   source /path/to/latent/editors/terminal/latent.bash     # in ~/.bashrc
#
# Ctrl-Space (default) inserts the model's suggestion at the cursor. Set before sourcing:
#   LATENT_KEY='\C-@'         the key, in `bind` notation (Ctrl-Space sends \C-@)
#   LATENT_COMMAND=latent     the latent command (e.g. /path/to/.venv/bin/latent)
#   LATENT_HISTORY_LINES=20   recent history lines given to the model as context (0: none)
# Settings such as LATENT_MODEL are read by `latent` itself.

_latent_complete() {
  local before=${READLINE_LINE:0:READLINE_POINT} after=${READLINE_LINE:READLINE_POINT}
  local n=${LATENT_HISTORY_LINES:-20} context='' lines=0
  if [ "$n" -gt 0 ] 2>/dev/null; then
    context=$(HISTTIMEFORMAT='' history "$n" | sed -e 's/^ *[0-9]\{1,\}\*\{0,1\} *//')
    [ -n "$context" ] && context+=$'\n' && lines=$(printf '%s' "$context" | wc -l)
  fi
  local suggestion
  suggestion=$(printf '%s%s' "$context" "$READLINE_LINE" |
    "${LATENT_COMMAND:-latent}" complete --stdin --language bash \
      --at "$((lines + 1)):$((${#before} + 1))" 2>/dev/null)
  suggestion=${suggestion%%$'\n'*}   # one command line
  [ -n "$suggestion" ] || return 0
  READLINE_LINE=$before$suggestion$after
  READLINE_POINT=$((READLINE_POINT + ${#suggestion}))
}

bind -x "\"${LATENT_KEY:-\\C-@}\": _latent_complete"
