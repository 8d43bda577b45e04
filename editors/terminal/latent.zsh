# Latent for zsh: a key shows the model's suggestion for the command line as a grey preview
# at the cursor (like zsh-autosuggestions), and Tab takes it.
#
#   source /path/to/latent/editors/terminal/latent.zsh      # in ~/.zshrc
#
# Ctrl-Space (default) asks `latent complete` ("latent…" shows below the line meanwhile). On
# the preview, Tab or Right (End, Ctrl-E) accepts it; Escape hides it; any other key hides it
# and does what it does. A failure (no `latent` command, a model that does not load) or no
# suggestion is said in one line below. Set before sourcing:
#   LATENT_KEY='^ '           the key, in `bindkey` notation
#   LATENT_COMMAND=latent     the latent command (e.g. /path/to/.venv/bin/latent)
#   LATENT_HISTORY_LINES=20   recent history lines given to the model as context (0: none)
#   LATENT_HIGHLIGHT='fg=8'   the preview's style (region_highlight notation)
# Settings such as LATENT_MODEL are read by `latent` itself. The model runs in the shared
# engine daemon (engine = auto: started on the first press, then every press finds it warm)
# unless LATENT_ENGINE or the config file's `engine` says otherwise.

# `--set engine=auto` unless LATENT_ENGINE or the config file chooses the engine.
_latent_engine_flag() {
  local config=${LATENT_CONFIG:-${XDG_CONFIG_HOME:-$HOME/.config}/latent/config.toml}
  [[ -n ${LATENT_ENGINE:-} ]] && return
  [[ -f $config ]] && grep -q '^[[:space:]]*engine[[:space:]]*=' "$config" 2>/dev/null && return
  print -rn -- '--set=engine=auto'
}

# Show `suggestion` between LBUFFER and RBUFFER until the next key; accept it or not.
_latent_preview() {
  local before=$LBUFFER after=$RBUFFER suggestion=$1 key c
  local style="$#before $(( $#before + $#suggestion )) ${LATENT_HIGHLIGHT:-fg=8}"
  BUFFER=$before                       # the text after the cursor moves behind the preview
  POSTDISPLAY=$suggestion$after
  region_highlight+=("$style")
  zle -R
  read -k 1 key                        # the next key; an escape sequence arrives at once
  while [[ $key == $'\e'* ]] && read -t 0.03 -k 1 c; do key+=$c; done
  region_highlight=("${(@)region_highlight:#$style}")
  POSTDISPLAY=
  case $key in
    ($'\t'|$'\e[C'|$'\eOC'|$'\e[F'|$'\eOF'|$'\e[4~'|$'\x05') LBUFFER=$before$suggestion ;;   # Tab Right End ^E
    ($'\e') LBUFFER=$before ;;                                                            # Escape
    (*) LBUFFER=$before; zle -U -- "$key" ;;              # any other key does what it would have done
  esac
  RBUFFER=$after
}

_latent_complete() {
  emulate -L zsh
  local command=${LATENT_COMMAND:-latent}
  if ! whence -p -- $command >/dev/null; then
    zle -M "latent: $command: command not found (set LATENT_COMMAND to the latent command)"
    return 0
  fi
  local before=$LBUFFER n=${LATENT_HISTORY_LINES:-20} context='' lines=0
  if (( n > 0 )); then
    context=$(fc -ln -$n 2>/dev/null)
    [[ -n $context ]] && context+=$'\n' && lines=${#${(f)context}}
  fi
  zle -R 'latent…'
  # stdout (the suggestion), then a record separator, stderr and the exit status
  local out
  out=$( { err=$(print -rn -- "$context$BUFFER" |
      $command complete --stdin --language bash $(_latent_engine_flag) \
        --at "$((lines + 1)):$(( ${#before} + 1 ))" 2>&1 >&3 3>&-); rc=$?
    print -rn -- $'\036'"$err"$'\036'"$rc"; } 3>&1)
  local suggestion=${out%%$'\036'*} rest=${out#*$'\036'}
  local err=${rest%$'\036'*} rc=${rest##*$'\036'}
  local said=${${(M)${(f)err}:#*[^[:space:]]*}[-1]}   # stderr's last line
  if (( rc != 0 )); then
    [[ $said == latent:* ]] || said="latent: ${said:-\`$command complete\` failed (exit status $rc)}"
    zle -M "$said"
    return 0
  fi
  suggestion=${suggestion%%$'\n'*}     # one command line
  if [[ -z $suggestion ]]; then
    [[ $said == 'latent: no suggestion'* ]] || said='latent: no suggestion'
    zle -M "$said"
    return 0
  fi
  zle -M ''
  _latent_preview "$suggestion"
}

zle -N _latent_complete
bindkey "${LATENT_KEY:-^ }" _latent_complete
