#!/usr/bin/env bash
# make test-remote, step 1: llama.cpp's OpenAI-compatible server (llama-cpp-python, built from
# source: ~12 minutes on 2 cores) in its own venv, and a GGUF conversion of the bundled model.
# Everything lands in .remote/ (git-ignored); a second run reuses it.
#
#   tests/remote/setup_llamacpp.sh [PYTHON]     PYTHON: the project's interpreter (torch, transformers)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
PY="${1:-$ROOT/.venv/bin/python}"
R="$ROOT/.remote"
mkdir -p "$R"

if [ ! -x "$R/venv/bin/python" ] || ! "$R/venv/bin/python" -c "import llama_cpp.server" 2>/dev/null; then
  python3 -m venv "$R/venv"
  echo "test-remote: building llama-cpp-python (about 12 minutes)" >&2
  CMAKE_ARGS="-DGGML_NATIVE=OFF" "$R/venv/bin/pip" install -q "llama-cpp-python[server]"
fi

# the converter ships inside the sdist (vendor/llama.cpp), with its gguf-py package
if [ ! -d "$R/llama.cpp" ]; then
  "$R/venv/bin/pip" download -q --no-binary :all: --no-deps llama-cpp-python -d "$R/sdist"
  tar -xzf "$R"/sdist/llama_cpp_python-*.tar.gz -C "$R"
  mv "$R"/llama_cpp_python-*/vendor/llama.cpp "$R/llama.cpp"
  rm -rf "$R"/llama_cpp_python-*
fi

if [ ! -f "$R/bundled-f32.gguf" ]; then
  "$PY" "$ROOT/tests/remote/convert.py" "$R/llama.cpp" "$ROOT/model/bundled" "$R/bundled-f32.gguf"
fi
echo "test-remote: ready ($R/bundled-f32.gguf)" >&2
