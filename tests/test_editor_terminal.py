"""The terminal clients in tmux, read off the screen as a person sees them: `latent repl`
(ghost text while typing Python, Tab accepts it, Ctrl-Right accepts a word) and the bash
key binding in editors/terminal/latent.bash (completes the command line in place).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from editors.testing import harness  # noqa: E402
from editors.testing.harness import EDITORS, Tmux, wait_for  # noqa: E402

from lsp_server import repl  # noqa: E402

# (earlier inputs, the line being typed): the first one the model completes is used
REPL_CONTEXTS = [
    (["import os"], "for name in os"),
    (["import sys"], "print"),
    (["x = 1"], "y = x"),
    ([], "import "),
]
LATENT = str(Path(harness.PYTHON).parent / "latent")
BASH_LINES = ["ls -", "cd ", "echo $", "git ", "python3 "]


def repl_context() -> tuple[harness.Model, tuple[list[str], str, str]]:
    """(model, (inputs, typed, the first line the pipeline suggests there, as the repl asks))."""
    def find(model: harness.Model):
        args = ["--set", f"threads={harness.THREADS}"] + (["--model", model.path] if model.path else [])
        suggester = repl.Suggester(repl.settings_from(repl.make_parser().parse_args(args)))
        wait_for(lambda: suggester.state != "loading", 60, "the model to load")
        assert suggester.state == "ready", suggester.message
        for inputs, typed in REPL_CONTEXTS:
            text = suggester.suggest(repl.document_text(inputs, typed))
            if text.strip():
                return inputs, typed, text
        return None

    return harness.pick("repl", find)


@pytest.fixture
def terminal(tmp_path):
    panes = []

    def start(command: list[str], model: harness.Model, **env) -> Tmux:
        try:
            pane = Tmux(command, harness.clean_env(tmp_path, model, **env), cwd=tmp_path, width=100, height=20)
        except harness.Missing as e:
            pytest.fail(str(e))
        panes.append(pane)
        return pane

    yield start
    for pane in panes:
        pane.close()


def prompt_line(screen: list[str], prompt: str) -> str | None:
    """The last line on screen that starts with `prompt`, without it."""
    lines = [line.rstrip() + " " for line in screen if (line.rstrip() + " ").startswith(prompt)]
    return lines[-1][len(prompt):].rstrip() if lines else None


def start_repl(terminal):
    try:
        model, (inputs, typed, suggestion) = repl_context()
    except harness.Missing as e:
        pytest.fail(str(e))
    pane = terminal([harness.PYTHON, "-m", "lsp_server.repl"], model)
    pane.wait_screen(lambda s: any("latent: ready" in line for line in s), 60, "the repl's model to load")
    for line in inputs:
        pane.type(line)
        pane.send("Enter")
        # the next prompt must be up before typing on: keys sent earlier land mid-redraw
        pane.wait_screen(lambda s: prompt_line(s, ">>> ") == "", 10, f"a fresh prompt after {line!r}")
    pane.type(typed)
    ghost = pane.wait_screen(
        lambda s: (lambda line: line[len(typed):] if line and line.startswith(typed) and len(line) > len(typed) else None)(
            prompt_line(s, ">>> ")), 30, f"ghost text after {typed!r}")
    assert ghost == suggestion.rstrip(), f"on screen {ghost!r}, the pipeline suggests {suggestion!r}"
    if model.answer:
        assert ghost == model.answer
    return pane, typed, ghost


@pytest.mark.slow
def test_repl_shows_ghost_text_and_tab_accepts_it(terminal):
    pane, typed, ghost = start_repl(terminal)
    harness.ROOT.joinpath("artifacts", "editors").mkdir(parents=True, exist_ok=True)
    pane.save(harness.ROOT / "artifacts" / "editors" / "repl-ghost.ansi")
    styled = [line for line in pane.screen(escapes=True) if ghost.strip() in line and ">>>" in line][-1]
    assert harness.styled_before(styled, ghost), f"the ghost text is not dimmed: {styled!r}"
    pane.send("Tab")
    # accepted: the text is the line's now, the cursor after it (ghost text never moves it)
    wait_for(lambda: pane.cursor()[1] == len(">>> " + typed + ghost), 10,
             f"the cursor after the accepted text (at {pane.cursor()})")
    assert prompt_line(pane.screen(), ">>> ").startswith(typed + ghost)


@pytest.mark.slow
def test_repl_ctrl_right_accepts_a_word_and_keeps_history(terminal, tmp_path):
    pane, typed, ghost = start_repl(terminal)
    word = repl.next_word(ghost)
    pane.send("C-Right")
    wait_for(lambda: pane.cursor()[1] == len(">>> " + typed + word), 10,
             f"the cursor after {word!r} (at {pane.cursor()})")
    pane.send("C-u")  # an input that runs: it lands in the history file
    pane.type("6 * 7")
    pane.send("Enter")
    pane.wait_screen(lambda s: "42" in [line.strip() for line in s], 10, "6 * 7 to print 42")
    history = tmp_path / "xdg-state" / "latent" / "repl_history"
    wait_for(lambda: history.is_file() and "6 * 7" in history.read_text(), 5, "the history file")


def bash_line(tmp: Path) -> tuple[harness.Model, tuple[str, str]]:
    """(model, (a command line, what `latent complete` suggests at its end))."""
    def find(model: harness.Model):
        env = harness.clean_env(tmp, model)
        for line in BASH_LINES:
            out = subprocess.run([LATENT, "complete", "--stdin", "--language", "bash", "--at", f"1:{len(line) + 1}"],
                                 input=line, capture_output=True, text=True, env=env, timeout=120)
            assert out.returncode == 0, out.stderr
            first = out.stdout.split("\n")[0]
            if first.strip():
                return line, first
        return None

    return harness.pick("bash", find)


def check_binding(terminal, tmp_path, shell: list[str], **env) -> None:
    """Type a command line in `shell`, press Ctrl-Space: the line reads typed text + suggestion."""
    model, (line, suggestion) = bash_line(tmp_path / "expected")
    pane = terminal(shell, model, LATENT_COMMAND=LATENT, **env)
    pane.wait_screen(lambda s: prompt_line(s, "$ ") == "", 10, f"the {shell[0]} prompt")
    pane.type(line)
    pane.send("C-Space")
    completed = line + suggestion
    pane.wait_screen(lambda s: prompt_line(s, "$ ") == completed.rstrip(), 60,
                     f"the command line to read {completed!r}")
    assert pane.cursor()[1] == len("$ " + completed), "the cursor goes after the inserted text"
    if model.answer:
        assert suggestion == model.answer


@pytest.mark.slow
def test_bash_binding_completes_the_command_line(terminal, tmp_path):
    try:
        harness.need(LATENT, "The `latent` command (`make install`; it is the venv's console script)")
    except harness.Missing as e:
        pytest.fail(str(e))
    rc = tmp_path / "bashrc"
    rc.write_text(f"PS1='$ '\nHISTFILE={tmp_path / 'bash_history'}\nsource {EDITORS / 'terminal' / 'latent.bash'}\n")
    check_binding(terminal, tmp_path, ["bash", "--noprofile", "--rcfile", str(rc), "-i"])


@pytest.mark.slow
def test_zsh_binding_completes_the_command_line(terminal, tmp_path):
    try:
        harness.need(LATENT, "The `latent` command (`make install`; it is the venv's console script)")
        harness.need("zsh", "zsh (`make editors-deps` installs it)")
    except harness.Missing as e:
        pytest.fail(str(e))
    zdot = tmp_path / "zdot"
    zdot.mkdir()
    (zdot / ".zshrc").write_text(f"PS1='$ '\nHISTFILE={tmp_path / 'zsh_history'}\n"
                                 f"source {EDITORS / 'terminal' / 'latent.zsh'}\n")
    check_binding(terminal, tmp_path, ["zsh", "-i"], ZDOTDIR=str(zdot))
