#!/usr/bin/env bash
# make bench-llamacpp, step 1: llama.cpp's C++ server (`llama-server`) and its quantizer
# (`llama-quantize`, for Q4_0 files made by llama.cpp itself) built once from the source vendored
# in llama-cpp-python's sdist, into the git-ignored .remote/ (~8 minutes on 2 cores).
# A no-op when both binaries exist.
#
#   benchmarks/llamacpp/build.sh [PYTHON]     PYTHON: an interpreter with pip (the project's venv)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
PY="${1:-$ROOT/.venv/bin/python}"
R="$ROOT/.remote"
VERSION=0.3.36                       # vendors ggml-org/llama.cpp@0c1e57098
SRC="$R/llama.cpp"
BIN="$SRC/build/bin/llama-server"
QUANTIZE="$SRC/build/bin/llama-quantize"
JOBS="${JOBS:-$(nproc)}"

if [ -x "$BIN" ] && [ -x "$QUANTIZE" ]; then
  echo "bench-llamacpp: $BIN and $QUANTIZE are built" >&2
  exit 0
fi
mkdir -p "$R"

# the source: vendor/llama.cpp of the sdist (shared with tests/remote/setup_llamacpp.sh)
if [ ! -f "$SRC/CMakeLists.txt" ]; then
  "$PY" -m pip download -q --no-binary :all: --no-deps "llama-cpp-python==$VERSION" -d "$R/sdist"
  rm -rf "$R/llama_cpp_python-$VERSION" "$SRC"
  tar -xzf "$R/sdist/llama_cpp_python-$VERSION.tar.gz" -C "$R"
  mv "$R/llama_cpp_python-$VERSION/vendor/llama.cpp" "$SRC"
  rm -f "$SRC/.git"                  # a submodule's pointer to a .git that the sdist lacks
  rm -rf "$R/llama_cpp_python-$VERSION"
fi

# the tools: system ones when present, else pip's wheels in the venv
TOOLS="$(dirname "$PY")"
for tool in cmake ninja; do
  if ! command -v "$tool" >/dev/null && [ ! -x "$TOOLS/$tool" ]; then
    "$PY" -m pip install -q "$tool"
  fi
done
export PATH="$PATH:$TOOLS"

echo "bench-llamacpp: building llama-server (about 8 minutes on 2 cores)" >&2
cmake -S "$SRC" -B "$SRC/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF >/dev/null
nice ninja -C "$SRC/build" -j "$JOBS" llama-server llama-quantize
echo "bench-llamacpp: built $BIN and $QUANTIZE" >&2
