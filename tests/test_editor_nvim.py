"""The Neovim plugin in real Neovim — 0.12 (vim.lsp.inline_completion) and 0.11 (the plugin's
own extmark renderer): a person types in a buffer, the model's ghost text appears on the
screen (tmux), Tab puts it in the line (read back over pynvim's RPC socket).
"""
from __future__ import annotations

import re
import sys
import textwrap
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from editors.testing import harness  # noqa: E402
from editors.testing.harness import DEPS, EDITORS, Tmux, wait_for  # noqa: E402

VERSIONS = {"0.12": DEPS / "bin" / "nvim-0.12", "0.11": DEPS / "bin" / "nvim-0.11"}
ARTIFACTS = harness.ROOT / "artifacts" / "editors"


def lua_list(items: list[str]) -> str:
    return "{" + ", ".join(f"[[{x}]]" for x in items) + "}"


def init_lua() -> str:
    return textwrap.dedent(f"""\
        vim.opt.runtimepath:prepend([[{EDITORS / 'nvim'}]])
        vim.o.swapfile = false
        vim.o.shortmess = vim.o.shortmess .. 'I'
        vim.o.laststatus = 0
        vim.o.ruler = false
        vim.o.showmode = false
        vim.cmd('filetype on')
        require('latent').setup({{
          cmd = {lua_list(harness.server_command())},
          threads = {harness.THREADS},
        }})
        """)


class Neovim:
    """Neovim in a tmux pane, with pynvim attached to its --listen socket."""

    def __init__(self, version: str, tmp: Path, model: harness.Model, text: str, name: str = "demo.py") -> None:
        import pynvim

        nvim = harness.need(VERSIONS[version], f"Neovim {version}")
        (tmp / name).write_text(text)
        (tmp / ".git").mkdir(exist_ok=True)  # the project root
        (tmp / "init.lua").write_text(init_lua())
        self.socket = str(tmp / "nvim.sock")
        env = harness.clean_env(tmp, model)
        self.tmux = Tmux([nvim, "--clean", "-u", str(tmp / "init.lua"), "--listen", self.socket, name],
                         env, cwd=tmp)
        wait_for(lambda: Path(self.socket).exists(), 20, "Neovim's RPC socket")
        self.api = pynvim.attach("socket", path=self.socket)

    def lua(self, code: str, *args):
        return self.api.exec_lua(code, *args)

    def wait_ready(self, timeout: float = 60) -> dict:
        check = "for _, s in pairs(require('latent').status) do if s.state ~= 'loading' then return s end end"
        status = wait_for(lambda: self.lua(check), timeout, "latent/status from the server")
        assert status["state"] == "ready", f"the server is not ready: {status}"
        return status

    def line(self, row: int) -> str:
        return self.api.current.buffer[row]

    def close(self) -> None:
        try:
            self.lua("for _, c in ipairs(vim.lsp.get_clients()) do c:stop(true) end")
            self.api.command("qall!")
        except Exception:
            pass
        self.tmux.close()


@pytest.fixture
def neovim(tmp_path):
    opened = []

    def start(version: str, text: str, name: str = "demo.py", model: harness.Model | None = None) -> Neovim:
        try:
            nv = Neovim(version, tmp_path, model or harness.candidates()[0](), text, name)
        except harness.Missing as e:
            pytest.fail(str(e))
        opened.append(nv)
        return nv

    yield start
    for nv in opened:
        nv.close()


def ghost_on_screen(nv: Neovim, row: int, typed_line: str):
    """The ghost text on screen row `row`: what follows the typed line there."""
    def check(screen):
        shown = screen[row].rstrip()
        return shown[len(typed_line):] if shown.startswith(typed_line) and len(shown) > len(typed_line) else None
    return nv.tmux.wait_screen(check, 30, f"ghost text after {typed_line!r}")


def next_word(text: str) -> str:
    """What accept-word takes (ghost.next_word): blanks, then a word or a run of punctuation."""
    match = re.match(r"[ \t]*\w+|[ \t]*[^\w\s]+|[ \t]+", text)
    return match.group(0) if match else text


def start_typing(neovim, version: str):
    """Open the test context in Neovim `version`, wait for the model, type the rest of the
    line; (nvim, row, typed line, the pipeline's suggestion, the ghost text on screen)."""
    try:
        model, (before, typed, suggestion) = harness.python_context(after="\n")
    except harness.Missing as e:
        pytest.fail(str(e))
    nv = neovim(version, before, model=model)
    renderer = nv.lua("return require('latent').renderer()")
    assert renderer == ("native" if version == "0.12" else "extmark")
    nv.wait_ready()
    row = before.count("\n")
    typed_line = before.split("\n")[-1] + typed
    # type at the end of the last line, or on a new line after it, as a person would
    nv.api.input("Go" if before.endswith("\n") else "GA")
    nv.tmux.type(typed)
    wait_for(lambda: nv.line(row) == typed_line, 10, f"the typed line {typed_line!r}")
    ghost = ghost_on_screen(nv, row, typed_line)
    first_line = suggestion.split("\n")[0]
    assert ghost == first_line.rstrip(), f"on screen {ghost!r}, the pipeline suggests {first_line!r}"
    if model.answer:
        assert ghost == model.answer
    assert nv.line(row) == typed_line, "ghost text must not be in the buffer before it is accepted"
    return nv, row, typed_line, first_line, ghost


@pytest.mark.slow
@pytest.mark.parametrize("version", ["0.12", "0.11"])
def test_ghost_text_appears_and_tab_accepts_it(neovim, version):
    nv, row, typed_line, first_line, ghost = start_typing(neovim, version)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    nv.tmux.save(ARTIFACTS / f"nvim-{version}-ghost.ansi")
    if version == "0.11":  # the plugin's own renderer draws it grey, unlike the typed text
        styled = nv.tmux.screen(escapes=True)[row]
        assert harness.styled_before(styled, ghost), f"ghost text is not styled: {styled!r}"

    nv.tmux.send("Tab")
    accepted = typed_line + first_line
    wait_for(lambda: nv.line(row) == accepted, 10, f"the accepted line {accepted!r} (it is {nv.line(row)!r})")
    nv.tmux.save(ARTIFACTS / f"nvim-{version}-accepted.ansi")


@pytest.mark.slow
@pytest.mark.parametrize("version", ["0.12", "0.11"])
def test_accept_word_takes_the_next_word(neovim, version):
    nv, row, typed_line, first_line, ghost = start_typing(neovim, version)
    nv.tmux.send("M-Right")
    word = next_word(first_line)
    wait_for(lambda: nv.line(row) == typed_line + word, 10,
             f"{typed_line + word!r} after accepting a word (the line is {nv.line(row)!r})")


@pytest.mark.slow
def test_status_command_and_checkhealth(neovim):
    nv = neovim("0.12", "x = 1\n")
    status = nv.wait_ready()
    messages = nv.api.request("nvim_exec2", "LatentStatus", {"output": True})["output"]  # no hit-enter prompt
    assert f"ready, model {status['model']}" in messages, messages
    nv.api.command("checkhealth latent")
    report = "\n".join(nv.api.current.buffer[:])
    assert "ERROR" not in report, report
    assert "the server offers inline completions" in report and "ready" in report, report


@pytest.mark.slow
def test_extmark_renderer_draws_virtual_lines_and_dismisses(neovim):
    """0.10 / 0.11: the first line as virtual text at the cursor, the rest as virtual lines;
    Ctrl-] hides them. (A plain-text buffer: no server, the suggestion is drawn directly.)"""
    nv = neovim("0.11", "", name="notes.txt")
    nv.api.input("iif ready:")
    wait_for(lambda: nv.line(0) == "if ready:", 10, "the typed text")
    nv.lua("require('latent.ghost').show(...)", "\n    go()\n    stop()")
    screen = nv.tmux.wait_screen(lambda s: s if s[1].rstrip() == "    go()" else None, 10, "virtual lines")
    assert screen[0].rstrip() == "if ready:" and screen[2].rstrip() == "    stop()", screen[:4]
    assert nv.api.current.buffer[:] == ["if ready:"], "virtual lines are not text"
    nv.tmux.send("C-]")
    nv.tmux.wait_screen(lambda s: s[1].startswith("~"), 10, "the suggestion to go")
    assert nv.api.current.buffer[:] == ["if ready:"]


