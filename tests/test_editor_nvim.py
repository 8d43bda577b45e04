"""The Neovim plugin in real Neovim — 0.12 (vim.lsp.inline_completion) and 0.11 (the plugin's
own extmark renderer): a person types in a buffer, the model's ghost text appears on the
screen (tmux) in its own colour with the latency after it, Tab puts it in the line (read back
over pynvim's RPC socket) and the next Tab never puts it there again; Alt-] / Alt-[ cycle
through several suggestions; with trigger = 'manual' typing sends nothing and Alt-\\ asks;
`:help latent`, the status (a notification while loading, :LatentStatus,
require('latent').status(), a snooze) and :checkhealth.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

import editor_harness as harness
from editor_harness import DEPS, EDITORS, Tmux, wait_for

VERSIONS = {"0.12": DEPS / "bin" / "nvim-0.12", "0.11": DEPS / "bin" / "nvim-0.11"}
ARTIFACTS = harness.ROOT / "artifacts" / "editors"


def lua_list(items: list[str]) -> str:
    return "{" + ", ".join(f"[[{x}]]" for x in items) + "}"


def init_lua(extra: str = "") -> str:
    """The user's init.lua; `extra`: more setup() options (Lua)."""
    return textwrap.dedent(f"""\
        vim.opt.runtimepath:prepend([[{EDITORS / 'nvim'}]])
        vim.o.swapfile = false
        vim.o.shortmess = vim.o.shortmess .. 'I'
        vim.o.laststatus = 0
        vim.o.ruler = false
        vim.o.showmode = false
        vim.cmd('filetype on')
        -- every inline completion request Neovim sends, whoever sends it (LspRequest is Neovim's)
        vim.g.inline_requests = 0
        vim.api.nvim_create_autocmd('LspRequest', {{ callback = function(ev)
          local r = ev.data.request
          if r.type == 'pending' and r.method == 'textDocument/inlineCompletion' then
            vim.g.inline_requests = vim.g.inline_requests + 1
          end
        end }})
        require('latent').setup({{
          cmd = {lua_list(harness.server_command())},
          threads = {harness.THREADS},
          {extra}
        }})
        """)


class Neovim:
    """Neovim in a tmux pane, with pynvim attached to its --listen socket."""

    def __init__(self, version: str, tmp: Path, model: harness.Model, text: str, name: str = "demo.py",
                 setup: str = "") -> None:
        import pynvim

        nvim = harness.need(VERSIONS[version], f"Neovim {version}")
        (tmp / name).write_text(text)
        (tmp / ".git").mkdir(exist_ok=True)  # the project root
        (tmp / "init.lua").write_text(init_lua(setup))
        self.socket = str(tmp / "nvim.sock")
        env = harness.clean_env(tmp, model)
        self.tmux = Tmux([nvim, "--clean", "-u", str(tmp / "init.lua"), "--listen", self.socket, name],
                         env, cwd=tmp)
        wait_for(lambda: Path(self.socket).exists(), 20, "Neovim's RPC socket")
        self.api = pynvim.attach("socket", path=self.socket)
        # the socket listens before init.lua is sourced, and Neovim answers requests meanwhile:
        # a first `require('latent')` could run before init.lua put the plugin on the runtimepath
        wait_for(lambda: self.api.eval("v:vim_did_enter") == 1, 20, "Neovim's startup (init.lua sourced)")

    def unblocked(self) -> None:
        """Fail, showing the screen, when Neovim waits at a prompt (hit-enter after an error or
        two messages at once): it would queue any other request, and the test would hang."""
        if self.api.request("nvim_get_mode").get("blocking"):
            raise AssertionError("Neovim waits at a prompt:\n" + "\n".join(self.tmux.screen()).rstrip())

    def lua(self, code: str, *args):
        self.unblocked()
        return self.api.exec_lua(code, *args)

    def wait_ready(self, timeout: float = 60) -> dict:
        check = "for _, s in pairs(require('latent').servers) do if s.state ~= 'loading' then return s end end"
        status = wait_for(lambda: self.lua(check), timeout, "latent/status from the server")
        assert status["state"] == "ready", f"the server is not ready: {status}"
        return status

    def last_completion(self) -> dict:
        """What the server's latest latent/status says of its last completion ({} before one)."""
        return self.lua("for _, s in pairs(require('latent').servers) do "
                        "if type(s.last) == 'table' then return s.last end end return {}") or {}

    def status_window(self) -> list[str]:
        """:LatentStatus typed as a user types it: the lines of the floating window it opens,
        with Neovim not waiting at a "Press ENTER" prompt."""
        self.tmux.send("Escape")
        self.tmux.type(":LatentStatus")
        self.tmux.send("Enter")
        find = ("for _, w in ipairs(vim.api.nvim_list_wins()) do if vim.api.nvim_win_get_config(w).relative ~= '' "
                "then return vim.api.nvim_buf_get_lines(vim.api.nvim_win_get_buf(w), 0, -1, false) end end")
        return wait_for(lambda: self.lua(find), 10, "the window of :LatentStatus")   # lua(): fails at a prompt

    def output(self, command: str) -> str:
        """What an Ex command prints (no hit-enter prompt)."""
        self.unblocked()
        return self.api.request("nvim_exec2", command, {"output": True})["output"]

    def line(self, row: int) -> str | None:
        """Line `row` of the current buffer; None while it has no such line (a buffer still
        loading reads as empty on a busy machine)."""
        self.unblocked()
        got = self.api.request("nvim_buf_get_lines", 0, row, row + 1, False)
        return got[0] if got else None

    def lines(self) -> list[str]:
        self.unblocked()
        return self.api.current.buffer[:]

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

    def start(version: str, text: str, name: str = "demo.py", model: harness.Model | None = None,
              setup: str = "") -> Neovim:
        try:
            nv = Neovim(version, tmp_path, model or harness.candidates()[0](), text, name, setup)
        except harness.Missing as e:
            pytest.fail(str(e))
        opened.append(nv)
        return nv

    yield start
    for nv in opened:
        nv.close()


# After a suggestion's last line: its place among several, then the latency annotation.
TAIL = re.compile(r"(?: \((?P<index>\d+)/(?P<count>\d+)\))?(?P<note>\s+\d+ ms · (?:\d+ tok|cache|typing-through))?$")


def ghost_on_screen(nv: Neovim, row: int, typed_line: str, timeout: float = 30):
    """The ghost text on screen row `row`: what follows the typed line there, without the
    position and latency drawn after it."""
    def check(screen):
        shown = screen[row].rstrip()
        if not shown.startswith(typed_line):
            return None
        ghost = shown[len(typed_line):]
        return ghost[:TAIL.search(ghost).start()] or None
    return nv.tmux.wait_screen(check, timeout, f"ghost text after {typed_line!r}")


def next_word(text: str) -> str:
    """What accept-word takes (ghost.next_word): blanks, then a word or a run of punctuation."""
    match = re.match(r"[ \t]*\w+|[ \t]*[^\w\s]+|[ \t]+", text)
    return match.group(0) if match else text


def start_typing(neovim, version: str, context=None, setup: str = ""):
    """Open the test context (default: harness.python_context) in Neovim `version`, wait for
    the model, type the rest of the line; (nvim, row, typed line, the first line of the
    pipeline's suggestion, the ghost text on screen)."""
    try:
        model, (before, typed, suggestion) = context or harness.python_context(after="\n")
    except harness.Missing as e:
        pytest.fail(str(e))
    nv = neovim(version, before, model=model, setup=setup)
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
    # grey, unlike the typed text, in a terminal without 'termguicolors' too (tmux here)
    assert not nv.lua("return vim.o.termguicolors")
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
@pytest.mark.parametrize("version", ["0.12", "0.11"])
def test_tab_twice_never_repeats_the_accepted_text(neovim, version):
    """An accept is followed by a fresh request at the new cursor, so the second Tab takes a
    new suggestion (or inserts a tab): never the accepted text again (issue #14)."""
    nv, row, typed_line, first_line, ghost = start_typing(neovim, version)
    shown_by = wait_for(lambda: (lambda last: last.get("suggestions") and last.get("request"))(nv.last_completion()),
                        10, "the status of the completion on screen")
    nv.tmux.send("Tab")
    accepted = typed_line + first_line
    wait_for(lambda: nv.line(row) == accepted, 10, f"the accepted line {accepted!r} (it is {nv.line(row)!r})")
    wait_for(lambda: nv.last_completion().get("request") not in (None, shown_by), 30,
             "a completion request at the cursor after the accept")
    time.sleep(0.5)  # its answer is drawn (or not) in the same turn of the event loop; be generous
    try:  # a suggestion that starts on the next line shows nothing after the accepted text
        second = ghost_on_screen(nv, row, accepted, timeout=5) if nv.last_completion().get("suggestions") else None
    except AssertionError:
        second = None
    assert second != first_line.rstrip(), f"the accepted text {first_line!r} is offered again"
    before_second = nv.lines()
    nv.tmux.send("Tab")
    wait_for(lambda: nv.lines() != before_second, 10, "the second Tab to insert something")
    text = "\n".join(nv.lines())
    assert first_line + first_line not in text, f"the accepted text twice in a row:\n{text}"
    nv.tmux.save(ARTIFACTS / f"nvim-{version}-tab-twice.ansi")


def test_help_latent_opens_the_plugin_help(tmp_path):
    """`:help latent` works from the shipped doc/tags (no setup, nothing written), and that
    file is what :helptags makes of doc/latent.txt today."""
    import pynvim

    nvim = harness.need(VERSIONS["0.12"], "Neovim 0.12")
    env = harness.clean_env(tmp_path, harness.Model(None, "none", None))
    doc = EDITORS / "nvim" / "doc"
    fresh = tmp_path / "doc"
    shutil.copytree(doc, fresh, ignore=shutil.ignore_patterns("tags"))
    subprocess.run([nvim, "--clean", "--headless", "-c", f"helptags {fresh}", "-c", "qa!"], env=env,
                   check=True, timeout=60)
    assert (doc / "tags").read_text() == (fresh / "tags").read_text(), \
        "editors/nvim/doc/tags is out of date: run `:helptags editors/nvim/doc`"
    editor = pynvim.attach("child", argv=[nvim, "--embed", "--headless", "--clean",
                                          "--cmd", f"set runtimepath^={EDITORS / 'nvim'}"])
    try:
        editor.command("help latent")
        assert editor.current.buffer.name.endswith("latent.txt") and editor.eval("&filetype") == "help"
        assert "*latent*" in editor.current.line
        editor.command("help latent.status()")
        assert "require('latent').status(" in editor.current.line
    finally:
        editor.close()


@pytest.mark.parametrize("version", ["0.12", "0.11"])
def test_ghost_highlight_has_a_terminal_colour(tmp_path, version):
    """Without 'termguicolors' Neovim's default scheme gives ComplHint (0.12's ghost text) no
    terminal colour: setup links it to LatentGhost, which has one."""
    import pynvim

    nvim = harness.need(VERSIONS[version], f"Neovim {version}")
    editor = pynvim.attach("child", argv=[nvim, "--embed", "--headless", "--clean",
                                          "--cmd", f"set runtimepath^={EDITORS / 'nvim'}"])
    try:
        editor.exec_lua("require('latent').setup({ cmd = { 'true' } })")
        ghost = editor.exec_lua("return vim.api.nvim_get_hl(0, { name = 'LatentGhost' })")
        assert ghost["ctermfg"] == 244 and ghost["italic"], ghost
        complhint = editor.exec_lua("return vim.api.nvim_get_hl(0, { name = 'ComplHint' })")
        if version == "0.12":
            assert complhint == {"link": "LatentGhost"}, complhint
            editor.command("colorscheme default")  # a colour scheme resets it; setup's autocmd links it again
            assert editor.exec_lua("return vim.api.nvim_get_hl(0, { name = 'ComplHint' })") == {"link": "LatentGhost"}
    finally:
        editor.close()


@pytest.mark.slow
def test_status_notification_command_function_and_checkhealth(neovim):
    from completion.types import REASONS

    nv = neovim("0.12", "value = 1\n")
    status = nv.wait_ready()
    model = status["model"]
    messages = nv.output("messages")
    assert "Latent: Loading the model" in messages and f"Latent: Loaded {model}" in messages, messages
    assert nv.lua("return require('latent').status()") == {"state": "ready", "model": model, "message": status["message"]}

    # a completion with no suggestion: inside a word
    nv.api.current.window.cursor = (1, 3)
    nv.api.input("i")
    why = REASONS["inside-word"]
    got = wait_for(lambda: (lambda s: s.get("reason") and s)(nv.lua("return require('latent').status()")), 30,
                   "the reason in require('latent').status()")
    assert got["reason"] == why and got["state"] == "ready" and got["latency_ms"] >= 0, got
    assert nv.lua("return require('latent').statusline()").startswith("Latent ")

    lines = nv.status_window()
    assert lines[0] == f"Latent: ready, model {model}", lines
    assert any(line.strip().startswith("last completion ") and line.endswith(f"no suggestion: {why}") for line in lines), lines
    assert "Latent: Latent" not in "\n".join(lines)

    nv.api.command("LatentStatus!")
    find = "for _, b in ipairs(vim.api.nvim_list_bufs()) do if vim.api.nvim_buf_get_name(b):match('latent://statistics') then " \
           "return vim.api.nvim_buf_get_lines(b, 0, -1, false) end end"
    figures = "\n".join(wait_for(lambda: nv.lua(find), 10, "the window of :LatentStatus!"))
    assert figures.startswith("Latent statistics"), figures
    assert "vim.NIL" not in figures and "{" not in figures and "table: 0x" not in figures, figures
    assert re.search(r"^\s+state\s+ready$", figures, re.M) and re.search(rf"^\s+model\s+{re.escape(model)}$", figures, re.M), figures
    assert re.search(r"^\s+requests\s+\d+$", figures, re.M), figures
    nv.api.input("<Esc>q")  # q closes it
    wait_for(lambda: not nv.lua(find), 10, "q to close the statistics")

    nv.api.command("checkhealth latent")
    report = "\n".join(nv.lines())
    assert "ERROR" not in report and "WARNING" not in report, report
    assert "the server offers inline completions" in report and "ready" in report, report
    assert "help tags: " in report and "ghost text is drawn with ComplHint" in report, report


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
    assert nv.lines() == ["if ready:"], "virtual lines are not text"
    nv.tmux.send("C-]")
    nv.tmux.wait_screen(lambda s: s[1].startswith("~"), 10, "the suggestion to go")
    assert nv.lines() == ["if ready:"]




# ---------------------------------------------------------------------------------------------
# Several suggestions, the trigger key, the snooze

def rest_after_cursor(suggestion, text: str) -> str:
    """What ghost text shows of a pipeline suggestion at the end of `text` (ASCII): its text
    less the part of its range already typed."""
    lines = text.split("\n")
    row, col = len(lines) - 1, len(lines[-1])
    start = suggestion.range.start
    if start.line == row and start.character <= col:
        typed = lines[row][start.character:col]
        if suggestion.text.startswith(typed):
            return suggestion.text[len(typed):]
    return suggestion.text


def several_context():
    """(model, (before, typed, the first suggestion's rest)): the first of harness.CONTEXTS
    where the pipeline offers two suggestions that differ on screen when the user asks (count
    3, the server's default `suggestions`)."""
    def find(model: harness.Model):
        from completion import CompletionService
        from completion.document import Lines

        for i, (before, typed) in enumerate(harness.CONTEXTS):
            service = CompletionService(harness.load_engine(model.path))   # one open document, as in the editor
            text = before + typed
            uri = f"file:///latent-editor-test/several{i}.py"
            service.workspace.open(uri, "python", text + "\n", 1, "demo.py")
            cursor = Lines(text + "\n").position(len(text))
            typing = service.complete(service.workspace.snapshot(uri), cursor)   # ghost text while typing
            result = service.complete(service.workspace.snapshot(uri), cursor, count=3)
            rests = [rest_after_cursor(s, text) for s in result.suggestions]
            firsts = [r.split("\n")[0].rstrip() for r in rests]
            if (typing.suggestions and typing.suggestions[0] == result.suggestions[0]
                    and len(firsts) >= 2 and firsts[0] and firsts[1] and firsts[0] != firsts[1]):
                return before, typed, rests[0]
        return None

    try:
        model, context = harness.pick("Neovim several suggestions", find)
    except harness.Missing as e:
        pytest.fail(str(e))
    return model, context


def wait_for_choice(nv: Neovim, row: int, typed_line: str, index: int, ghost: str | None = None,
                    unlike: str | None = None) -> tuple[str, list[str]]:
    """Wait until row `row` shows, after the typed line, a ghost text marked as suggestion
    `index` of two or more ("(2/3)") — `ghost` itself when given, anything but `unlike`
    otherwise; (that ghost text, the screen)."""
    def check(screen):
        shown = screen[row].rstrip()
        if not shown.startswith(typed_line):
            return None
        rest = shown[len(typed_line):]
        tail = TAIL.search(rest)
        on_screen = rest[:tail.start()]
        if tail.group("index") != str(index) or int(tail.group("count")) < 2 or not on_screen:
            return None
        return (on_screen, screen) if on_screen == (ghost or on_screen) and on_screen != unlike else None
    what = f"suggestion {index} of 2 or more" + (f", {ghost!r}" if ghost else f", not {unlike!r}")
    return nv.tmux.wait_screen(check, 20, what)


def annotation(screen: list[str]) -> str | None:
    """The latency annotation anywhere on the screen ("74 ms · 12 tok")."""
    for line in screen:
        match = TAIL.search(line.rstrip())
        if match and match.group("note"):
            return match.group("note").strip()
    return None


@pytest.mark.slow
@pytest.mark.parametrize("version", ["0.12", "0.11"])
def test_alt_bracket_cycles_through_suggestions_and_tab_accepts_the_second(neovim, version):
    """The server sends one suggestion while typing; the first Alt-] asks it for several
    (Invoked) and shows the second, Alt-[ goes back to the first, Alt-] again to the second, Tab
    takes the second. The latency is drawn after the ghost text all along (annotate = true).

    Which suggestion comes second is the server's: its engine has answered every keystroke
    before (the latent rows reused, summed in another order than one prefill), so a near-tie
    among the alternatives may come out otherwise than in `several_context`'s fresh pipeline,
    which only picks a place where there are several."""
    context = several_context()
    nv, row, typed_line, first_line, ghost = start_typing(neovim, version, context)
    screen = nv.tmux.wait_screen(lambda s: annotation(s) and s, 10, "the latency after the ghost text")
    note = annotation(screen)
    assert re.fullmatch(r"\d+ ms · (\d+ tok|cache|typing-through)", note), note
    assert not any(re.search(r" \(\d+/\d+\)", line) for line in screen), "one suggestion has no (1/1)"
    requests = nv.lua("return vim.g.inline_requests")

    nv.tmux.send("M-]")
    second, screen = wait_for_choice(nv, row, typed_line, 2, unlike=ghost)
    assert nv.lua("return vim.g.inline_requests") == requests + 1, "the first Alt-] asks the server once"
    assert annotation(screen), "no latency after the cycled suggestion:\n" + "\n".join(screen)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    nv.tmux.save(ARTIFACTS / f"nvim-{version}-cycle.ansi")
    assert nv.line(row) == typed_line, "a suggestion on screen is not in the buffer"

    nv.tmux.send("M-[")
    wait_for_choice(nv, row, typed_line, 1, ghost=ghost)
    nv.tmux.send("M-]")
    wait_for_choice(nv, row, typed_line, 2, ghost=second)
    assert nv.lua("return vim.g.inline_requests") == requests + 1, "cycling among the answers asks nothing more"

    nv.tmux.send("Tab")
    wait_for(lambda: nv.line(row) == typed_line + second, 10,
             f"the second suggestion accepted: {typed_line + second!r} (the line is {nv.line(row)!r})")


@pytest.mark.slow
@pytest.mark.parametrize("version", ["0.12", "0.11"])
def test_manual_trigger_asks_only_on_the_key(neovim, version):
    """trigger = 'manual': typing sends no inline completion request at all (counted as
    Neovim sends them, LspRequest), and Alt-\\ sends one. Server settings reach the server
    from the top level of setup() and from its `settings` table alike."""
    model, (before, typed, _) = harness.python_context(after="\n")
    nv = neovim(version, before, model=model, setup="trigger = 'manual', settings = { debounce_ms = 80 },")
    nv.wait_ready()
    stats = ("local client = require('latent').clients()[1] return client:request_sync('workspace/executeCommand', "
             "{ command = 'latent.stats' }, 10000).result.settings")
    settings = nv.lua(stats)
    assert (settings["trigger"], settings["debounce_ms"]) == ("manual", 80), settings
    assert nv.lua("return require('latent').config.debounce_ms") is None, "one home for debounce_ms: the server"
    row = before.count("\n")
    typed_line = before.split("\n")[-1] + typed
    nv.api.input("Go" if before.endswith("\n") else "GA")
    nv.tmux.type(typed)
    wait_for(lambda: nv.line(row) == typed_line, 10, f"the typed line {typed_line!r}")
    time.sleep(1.0)  # past 0.12's built-in 200 ms debounce and the server's 50 ms
    assert nv.lua("return vim.g.inline_requests") == 0, "typing sent an inline completion request"
    assert nv.tmux.screen()[row].rstrip() == typed_line, "ghost text without asking"

    nv.tmux.send("M-\\")
    ghost = ghost_on_screen(nv, row, typed_line)
    assert ghost.strip(), ghost
    assert nv.lua("return vim.g.inline_requests") == 1
    assert nv.last_completion().get("suggestions", 0) >= 1
    time.sleep(0.5)
    assert nv.lua("return vim.g.inline_requests") == 1, "showing the answer sent another request"
    assert nv.line(row) == typed_line


@pytest.mark.slow
def test_snooze_turns_completion_off_until_a_time_the_status_says(neovim):
    from completion.types import REASONS

    nv = neovim("0.11", "value = 1\n")
    model = nv.wait_ready()["model"]
    nv.api.command("LatentSnooze 30")
    status = wait_for(lambda: (lambda s: s["state"] == "snoozed" and s)(nv.lua("return require('latent').status()")),
                      10, "the snoozed state in require('latent').status()")
    assert abs(status["snoozed_until"] - (time.time() + 30 * 60)) < 60, status
    until = time.strftime("%H:%M", time.localtime(status["snoozed_until"]))
    assert nv.status_window()[0] == f"Latent: ready, snoozed until {until}, model {model}"
    assert nv.lua("return require('latent').statusline()") == f"Latent snoozed until {until}"
    # said when latent.toggle answers, which may come after the status notification
    wait_for(lambda: f"Latent: completion is snoozed until {until}" in nv.output("messages"), 10,
             "the snooze message")

    nv.api.input("GA")   # typing asks; the server says why there is nothing
    nv.tmux.type(" + 1")
    got = wait_for(lambda: (lambda s: s.get("reason") and s)(nv.lua("return require('latent').status()")), 20,
                   "the reason in require('latent').status()")
    assert got["reason"] == REASONS["snoozed"], got

    nv.api.command("LatentToggle")   # flips: on again before the snooze ends
    wait_for(lambda: nv.lua("return require('latent').status()")["state"] == "ready", 10, "completion on again")
    assert "snoozed_until" not in nv.lua("return require('latent').status()")
