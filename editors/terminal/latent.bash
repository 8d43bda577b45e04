# Latent for bash: a key completes the command line in place with `latent complete`.
#
#   source /path/to/latent/editors/terminal/latent.bash     # in ~/.bashrc
#
# Ctrl-Space (default) inserts the model's suggestion at the cursor; "latent…" shows after the
# line while it works, and a failure (no `latent` command, a model that does not load) prints
# one line. Set before sourcing:
#   LATENT_KEY='\C-@'         the key, in `bind` notation (Ctrl-Space sends \C-@)
#   LATENT_COMMAND=latent     the latent command (e.g. /path/to/.venv/bin/latent)
#   LATENT_HISTORY_LINES=20   recent history lines given to the model as context (0: none)
# Settings such as LATENT_MODEL are read by `latent` itself. The model runs in the shared
# engine daemon (engine = auto: started on the first press, then every press finds it warm)
# unless LATENT_ENGINE or the config file's `engine` says otherwise.

# `--set engine=auto` unless LATENT_ENGINE or the config file chooses the engine.
_latent_engine_flag() {
  local config=${LATENT_CONFIG:-${XDG_CONFIG_HOME:-$HOME/.config}/latent/config.toml}
  [ -n "${LATENT_ENGINE:-}" ] && return
  [ -f "$config" ] && grep -q '^[[:space:]]*engine[[:space:]]*=' "$config" 2>/dev/null && return
  printf '%s' '--set=engine=auto'
}

# Bash 5.1+ blanks the command line while a `bind -x` command runs: draw it again with `mark`
# after it ('' leaves the row empty for bash to redraw). ${PS1@P} needs bash 4.4.
_latent_mark() {
  local prompt=''
  (( BASH_VERSINFO[0] * 100 + BASH_VERSINFO[1] >= 404 )) && prompt=${PS1@P}
  prompt=${prompt##*$'\n'}
  if [ -n "$1" ]; then
    printf '\r\e[K%s%s\e[2m%s\e[22m' "$prompt" "$READLINE_LINE" "$1" >/dev/tty
  else
    printf '\r\e[K' >/dev/tty
  fi
}

_latent_complete() {
  local before=${READLINE_LINE:0:READLINE_POINT} after=${READLINE_LINE:READLINE_POINT}
  local command=${LATENT_COMMAND:-latent}
  if ! type -P -- "$command" >/dev/null; then
    printf '\r\e[Klatent: %s: command not found (set LATENT_COMMAND to the latent command)\n' \
      "$command" >&2
    return 0
  fi
  local n=${LATENT_HISTORY_LINES:-20} context='' lines=0
  if [ "$n" -gt 0 ] 2>/dev/null; then
    context=$(HISTTIMEFORMAT='' history "$n" | sed -e 's/^ *[0-9]\{1,\}\*\{0,1\} *//')
    [ -n "$context" ] && context+=$'\n' && lines=$(printf '%s' "$context" | wc -l)
  fi
  local engine
  engine=$(_latent_engine_flag)
  _latent_mark ' latent…'
  # stdout (the suggestion), then a record separator, stderr and the exit status
  local out
  out=$( { err=$(printf '%s%s' "$context" "$READLINE_LINE" |
      "$command" complete --stdin --language bash $engine \
        --at "$((lines + 1)):$((${#before} + 1))" 2>&1 >&3 3>&-); rc=$?
    printf '\036%s\036%d' "$err" "$rc"; } 3>&1)
  local suggestion=${out%%$'\036'*} rest=${out#*$'\036'}
  local err=${rest%$'\036'*} rc=${rest##*$'\036'}
  _latent_mark ''
  if [ "$rc" != 0 ]; then
    err=$(printf '%s\n' "$err" | grep -v '^[[:space:]]*$' | tail -n 1)
    [ -n "$err" ] || err="\`$command complete\` failed (exit status $rc)"
    case $err in latent:*) ;; *) err="latent: $err" ;; esac
    printf '%s\n' "$err" >&2
    return 0
  fi
  if [ -z "$suggestion" ]; then
    err=$(printf '%s\n' "$err" | grep '^latent: no suggestion' | tail -n 1)
    [ -n "$err" ] && printf '%s\n' "$err" >&2   # why a whole language gets nothing
    return 0
  fi
  suggestion=${suggestion%%$'\n'*}   # one command line
  READLINE_LINE=$before$suggestion$after
  READLINE_POINT=$((READLINE_POINT + ${#suggestion}))
}

bind -x "\"${LATENT_KEY:-\\C-@}\": _latent_complete"
