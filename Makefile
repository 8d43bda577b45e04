# Latent — set-up, tests and benchmarks. `make demo` and `make test` are all a newcomer needs.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: install editors-deps vscode demo test test-fast test-editors test-remote bench clean

install: $(STAMP)

# torch first, pinned to the CPU build that these machines carry; the package asks for a range.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'
	touch $(STAMP)

# Editors the tests drive (tmux, Neovim 0.11 / 0.12, code-server + Chromium, the extension's
# node modules): installed once into editors/.deps/, a no-op afterwards.
editors-deps: install
	editors/install-test-deps.sh $(PY)

vscode:
	$(MAKE) -C editors/vscode vsix

demo: install
	$(PY) benchmarks/demo.py

test: install editors-deps
	$(PY) -m pytest -q

test-editors: install editors-deps
	$(PY) -m pytest -q tests/test_editor_*.py

# Not in CI: builds llama.cpp (~12 minutes) and serves a GGUF conversion of the bundled model
# to the remote backend.
test-remote: install
	tests/remote/setup_llamacpp.sh $(PY)
	$(PY) -m pytest -q -o addopts="" tests/remote

test-fast: install
	$(PY) -m pytest -q -m "not slow"

bench: install
	$(PY) benchmarks/engine_bench.py --write docs/benchmarks.md

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
