# Latent — set-up, tests and benchmarks. `make demo` and `make test` are all a newcomer needs.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: install install-user editors-deps vscode demo lint test test-fast test-editors test-remote bench bench-llamacpp bench-lite train train-stop train-pause train-resume clean

install: $(STAMP)

# torch first, pinned to the CPU build that these machines carry; the package asks for a range.
# Installer output goes to .venv/install.log; one line says what is happening.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "Installing Latent into $(VENV) (torch, transformers, tree-sitter grammars; log: $(VENV)/install.log) ..."
	@( $(PIP) install --upgrade pip && $(PIP) install torch==2.13.0 && $(PIP) install -e '.[dev]' ) \
		> $(VENV)/install.log 2>&1 || { tail -20 $(VENV)/install.log; echo "install failed: see $(VENV)/install.log"; exit 1; }
	@touch $(STAMP)
	@echo "Installed."

# `latent` on PATH: a link in ~/.local/bin (or $(BINDIR)) to the virtual environment's command.
BINDIR ?= $(HOME)/.local/bin
install-user: install
	@mkdir -p $(BINDIR)
	@ln -sf $(abspath $(VENV))/bin/latent $(BINDIR)/latent
	@echo "Linked $(BINDIR)/latent -> $(abspath $(VENV))/bin/latent"
	@case ":$$PATH:" in *":$(BINDIR):"*) ;; *) echo "Add $(BINDIR) to PATH, e.g. in ~/.bashrc: export PATH=\"$(BINDIR):\$$PATH\"";; esac

# Editors the tests drive (tmux, Neovim 0.11 / 0.12, code-server + Chromium, the extension's
# node modules): installed once into editors/.deps/, a no-op afterwards.
editors-deps: install
	editors/install-test-deps.sh $(PY)

vscode:
	$(MAKE) -C editors/vscode vsix

demo: install
	@$(PY) benchmarks/demo.py

# ruff (pyflakes, bugbear, import order) and pyright in basic mode on the three packages;
# pyright from npm, pinned, into the virtual environment once.
PYRIGHT_VERSION := 1.1.414
PYRIGHT := $(VENV)/pyright/node_modules/.bin/pyright
$(PYRIGHT):
	@npm install --prefix $(VENV)/pyright --no-audit --no-fund --loglevel=error pyright@$(PYRIGHT_VERSION) >/dev/null

lint: install $(PYRIGHT)
	$(VENV)/bin/ruff check model completion lsp_server
	$(PYRIGHT) -p pyproject.toml

test: install editors-deps
	$(PY) -m pytest -q

test-editors: install editors-deps
	$(PY) -m pytest -q tests/test_editor_*.py

# Not in CI: builds llama.cpp (~12 minutes) and serves a GGUF conversion of the bundled model
# to the remote backend.
test-remote: install
	tests/remote/setup_llamacpp.sh $(PY)
	benchmarks/llamacpp/build.sh $(PY)
	$(PY) -m pytest -q -o addopts="" tests/remote

test-fast: install
	$(PY) -m pytest -q -m "not slow"

bench: install
	$(PY) benchmarks/engine_bench.py --write docs/benchmarks.md

# Malformed frames and hostile params against `latent lsp` for a few minutes (make test runs a short one).
fuzz: install
	$(PY) benchmarks/fuzz_lsp.py --minutes $(or $(MINUTES),5)

# Not in CI: builds llama.cpp's llama-server once into .remote/ (~8 minutes on 2 cores), converts
# the bundled model to an f32 GGUF and measures Latent against it on the same weights.
bench-llamacpp: install
	benchmarks/llamacpp/build.sh $(PY)
	[ .remote/bundled-f32.gguf -nt model/bundled/model.safetensors ] || \
		$(PY) tests/remote/convert.py .remote/llama.cpp model/bundled .remote/bundled-f32.gguf
	$(PY) benchmarks/llamacpp_bench.py --write docs/benchmarks.md

# a DeepSeek-Coder-V2-Lite-shaped slice (4 layers, random weights) in int8 against llama.cpp's
# Q8_0 of the same weights, and in int4 against its Q4_0; ~4 GB in the git-ignored .remote/,
# ~20 minutes on 2 cores
bench-lite: install
	benchmarks/llamacpp/build.sh $(PY)
	$(PY) benchmarks/lite_slice_bench.py --write docs/benchmarks.md
	$(PY) benchmarks/lite_slice_bench.py --quantize int4 --write docs/benchmarks.md

# The bundled model's training, in the background at the lowest priority (docs/training.md, section 6):
# the corpus once per machine (~10 minutes), then the run in ~/.cache/latent/runs/small, resumed
# from its checkpoint. train-stop checkpoints and stops it; pause it while timing a benchmark
# (the [p] keeps pkill from matching the shell that runs it).
TRAIN_LOG := $(HOME)/.cache/latent/train.out
TRAINING  := [p]ython -m model.train
train: install
	@mkdir -p $(dir $(TRAIN_LOG))
	@nohup nice -n 19 sh -c 'test -d $(HOME)/.cache/latent/corpus/files || $(PY) -m model.train corpus; \
		exec $(PY) -m model.train' >> $(TRAIN_LOG) 2>&1 &
	@echo "Training in the background: $(TRAIN_LOG), ~/.cache/latent/runs/small/log.jsonl (make train-stop)"

train-stop:
	@pkill -TERM -f "$(TRAINING)" && echo "Asked the training to checkpoint and stop." || echo "No training is running."

train-pause:
	@pkill -STOP -f "$(TRAINING)" || true

train-resume:
	@pkill -CONT -f "$(TRAINING)" || true

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
