"""The terminal clients in tmux, read off the screen as a person sees them: `latent repl`
(ghost text while typing Python, Tab accepts it, Ctrl-Right accepts a word, Escape hides it,
Alt-] / Alt-[ cycle through several, Alt-\\ asks for one with `trigger = manual`,
a long one is cut at the terminal's edge, the bottom bar says why there is none) and the key
bindings in editors/terminal/: bash completes the command line in place, zsh shows a preview
that Tab takes; both use the engine daemon and say in one line when something fails.
"""
from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

import editor_harness as harness
from editor_harness import EDITORS, Tmux, wait_for

from lsp_server import repl

# (earlier inputs, the line being typed): the first one the model completes is used
REPL_CONTEXTS = [
    (["import os"], "for name in os"),
    (["import sys"], "print"),
    (["x = 1"], "y = x"),
    ([], "import "),
]
WIDTH = 100   # the terminal's columns: the key tests use a context whose suggestion fits on the line
LATENT = str(Path(harness.PYTHON).parent / "latent")
BASH_LINES = ["ls -", "cd ", "echo $", "git ", "python3 "]


def fits(inputs: list[str], typed: str, suggestion: str) -> bool:
    """Whether the prompt, the typed text and the suggestion fit on one line of the terminal (a
    longer one is cut at its edge: test_repl_cuts_a_long_ghost_text_at_the_terminal_width)."""
    return len(">>> " + typed + suggestion) < WIDTH


def cut_width(inputs: list[str], typed: str, suggestion: str) -> tuple[int, int]:
    """(columns, room for ghost text) of a terminal that cuts the suggestion at about half: as
    narrow as the earlier inputs let it be (each on a row of its own); the cursor's column stays
    free of ghost text."""
    ghost = suggestion.rstrip()
    width = max(len(">>> " + typed) + max(2, len(ghost) // 2), *(len(">>> " + line) for line in inputs)) + 1
    return width, width - len(">>> " + typed) - 1


def cuttable(inputs: list[str], typed: str, suggestion: str) -> bool:
    return len(suggestion.rstrip()) > cut_width(inputs, typed, suggestion)[1]


def repl_context(accept=fits) -> tuple[harness.Model, tuple[list[str], str, str]]:
    """(model, (inputs, typed, the first line the pipeline suggests there, as the repl asks)) for
    the first context whose suggestion `accept(inputs, typed, line)` takes: by default one that
    fits on the line."""
    def find(model: harness.Model):
        args = ["--set", f"threads={harness.THREADS}"] + (["--model", model.path] if model.path else [])
        suggester = repl.Suggester(repl.settings_from(repl.make_parser().parse_args(args)))
        wait_for(lambda: suggester.state != "loading", 60, "the model to load")
        assert suggester.state == "ready", suggester.message
        for inputs, typed in REPL_CONTEXTS:
            lines = suggester.suggest(repl.document_text(inputs, typed))
            if lines and accept(inputs, typed, lines[0]):
                return inputs, typed, lines[0]
        return None

    return harness.pick(f"repl-{accept.__name__}", find)


def repl_choices() -> tuple[harness.Model, tuple[list[str], str, list[str]]]:
    """(model, (inputs, typed, the suggestions the pipeline offers there when asked: two or more))."""
    def find(model: harness.Model):
        args = ["--set", f"threads={harness.THREADS}"] + (["--model", model.path] if model.path else [])
        suggester = repl.Suggester(repl.settings_from(repl.make_parser().parse_args(args)))
        wait_for(lambda: suggester.state != "loading", 60, "the model to load")
        for inputs, typed in REPL_CONTEXTS:
            typing = suggester.suggest(repl.document_text(inputs, typed))
            asked = suggester.suggest(repl.document_text(inputs, typed), asked=True)
            if typing and len(asked) >= 2 and asked[0] == typing[0] and all(fits(inputs, typed, line) for line in asked):
                return inputs, typed, asked
        return None

    return harness.pick("repl-choices", find)


@pytest.fixture
def terminal(tmp_path):
    panes = []

    def start(command: list[str], model: harness.Model, width: int = WIDTH, **env) -> Tmux:
        try:
            pane = Tmux(command, harness.clean_env(tmp_path, model, **env), cwd=tmp_path, width=width, height=20)
        except harness.Missing as e:
            pytest.fail(str(e))
        panes.append(pane)
        return pane

    yield start
    for pane in panes:
        pane.close()
        harness.stop_daemon(pane.env)


def prompt_line(screen: list[str], prompt: str) -> str | None:
    """The last line on screen that starts with `prompt`, without it."""
    lines = [line.rstrip() + " " for line in screen if (line.rstrip() + " ").startswith(prompt)]
    return lines[-1][len(prompt):].rstrip() if lines else None


def repl_ready(screen: list[str]) -> bool:
    """Whether the repl's bar says its model is loaded; in a terminal too narrow for the whole
    word, as much of it as the bar has room for ("latent: rea")."""
    bar = "latent: ready"
    return any(bar in line or len(text := line.strip()) >= len("latent: r") and bar.startswith(text)
               for line in screen)


def open_repl(terminal, *args: str, width: int = WIDTH, context=None):
    """`latent repl ARGS` in tmux, the model loaded, the context's earlier inputs run and its
    line typed; (pane, model, typed, the pipeline's suggestion there)."""
    try:
        model, (inputs, typed, suggestion) = context or repl_context()
    except harness.Missing as e:
        pytest.fail(str(e))
    pane = terminal([harness.PYTHON, "-m", "lsp_server.repl", *args], model, width=width)
    pane.wait_screen(repl_ready, 60, "the repl's model to load")
    for line in inputs:
        pane.type(line)
        pane.send("Enter")
        # the next prompt must be up before typing on (keys sent between two prompts are echoed
        # by the terminal): an empty prompt below the input run, with the bar, which shows once
        # the prompt knows where it is on screen
        pane.wait_screen(lambda s: fresh_prompt_after(s, line), 10, f"a fresh prompt after {line!r}")
    pane.type(typed)
    return pane, model, typed, suggestion


def fresh_prompt_after(screen: list[str], line: str) -> bool:
    rows = [row.rstrip() for row in screen]
    ran = [i for i, row in enumerate(rows) if row == (">>> " + line).rstrip()]
    return bool(ran) and ">>>" in rows[ran[-1] + 1:] and bool(toolbar(screen))


def after_typed(typed: str):
    """A screen check: what follows `typed` on the input line (None while nothing does)."""
    def check(screen):
        line = prompt_line(screen, ">>> ")
        return line[len(typed):] if line and line.startswith(typed) and len(line) > len(typed) else None
    return check


def start_repl(terminal):
    pane, model, typed, suggestion = open_repl(terminal)
    ghost = pane.wait_screen(after_typed(typed), 30, f"ghost text after {typed!r}")
    assert ghost == suggestion.rstrip(), f"on screen {ghost!r}, the pipeline suggests {suggestion!r}"
    if model.answer:
        assert ghost == model.answer
    return pane, typed, ghost


def toolbar(screen: list[str]) -> str:
    lines = [line for line in screen if line.startswith(" latent: ")]
    return lines[-1].rstrip() if lines else ""


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
def test_repl_tab_twice_never_repeats_the_accepted_text(terminal):
    """After an accept the repl asks afresh at the new cursor: the second Tab takes a new
    suggestion or indents, and never inserts the accepted text again (issue #14: `###`)."""
    pane, typed, ghost = start_repl(terminal)
    pane.send("Tab")
    accepted = typed + ghost
    wait_for(lambda: pane.cursor()[1] == len(">>> " + accepted), 10, f"the cursor after {accepted!r}")
    # the answer at the new cursor: ghost text after the accepted text, or the bar says why not
    pane.wait_screen(lambda s: after_typed(accepted)(s) or "no suggestion: " in toolbar(s), 30,
                     "the suggestion after the accepted text, or the reason there is none")
    second = after_typed(accepted)(pane.screen()) or ""
    assert second != ghost, f"the accepted text {ghost!r} is offered again"
    pane.send("Tab")
    expected = accepted + (second or "    ")  # the new suggestion, or an indent
    wait_for(lambda: pane.cursor()[1] == len(">>> " + expected), 10, f"the second Tab to make {expected!r}")
    line = prompt_line(pane.screen(), ">>> ").ljust(len(expected))[:len(expected)]  # not the next ghost text
    assert line == expected and ghost + ghost not in line, f"after Tab Tab: {line!r}"


@pytest.mark.slow
def test_repl_escape_hides_the_ghost_text_until_the_next_keystroke(terminal):
    pane, typed, ghost = start_repl(terminal)
    pane.send("Escape")
    pane.wait_screen(lambda s: prompt_line(s, ">>> ") == typed, 5, "Escape to hide the ghost text")
    time.sleep(1.0)  # a suggestion still on its way, or the next redraw, must not bring it back
    assert prompt_line(pane.screen(), ">>> ") == typed
    assert pane.cursor()[1] == len(">>> " + typed)
    pane.send("BSpace")
    pane.type(typed[-1])  # a keystroke: suggestions are back
    shown = pane.wait_screen(after_typed(typed), 30, "the ghost text after typing again")
    assert shown == ghost


@pytest.mark.slow
def test_repl_cuts_a_long_ghost_text_at_the_terminal_width(terminal):
    """Ghost text longer than the room left on the row is cut with an ellipsis on that row,
    never wrapped onto a row of its own under a `... ` prompt; Tab still takes all of it."""
    model, (inputs, typed, suggestion) = context = repl_context(cuttable)
    ghost = suggestion.rstrip()
    width, room = cut_width(inputs, typed, suggestion)
    pane, _, _, _ = open_repl(terminal, width=width, context=context)
    shown = repl.fit(ghost, room)
    assert shown.endswith("…") and len(shown) == room
    pane.wait_screen(lambda s: prompt_line(s, ">>> ") == typed + shown, 30, f"the cut ghost text {shown!r}")
    screen = pane.screen()
    assert not any(line.startswith("...") for line in screen), "the ghost text wrapped:\n" + "\n".join(screen)
    pane.send("Tab")
    accepted = typed + ghost  # now real input: it wraps as input does

    def input_text(screen):
        rows = [i for i, line in enumerate(screen) if line.startswith(">>> ")]
        text = screen[rows[-1]][4:]
        for line in screen[rows[-1] + 1:]:
            if not line.startswith("... "):
                break
            text += line[4:]
        return text.startswith(accepted)

    pane.wait_screen(input_text, 10, f"the whole suggestion accepted: {accepted!r}")


@pytest.mark.slow
def test_repl_bar_says_why_there_is_no_suggestion_and_how_long_it_took(terminal):
    from completion.types import REASONS

    pane, _, _, _ = open_repl(terminal, "--set", "disabled_languages=python", context=(
        harness.candidates()[0](), ([], "x = ", "")))
    bar = pane.wait_screen(lambda s: "no suggestion" in toolbar(s) and toolbar(s), 30, "the reason in the bar")
    assert re.search(r"latent: ready · \d+ ms · no suggestion: " + re.escape(REASONS["language-disabled"]), bar), bar
    assert prompt_line(pane.screen(), ">>> ") == "x ="


@pytest.mark.slow
def test_repl_alt_bracket_cycles_through_suggestions_and_tab_accepts_the_second(terminal):
    try:
        model, (inputs, typed, choices) = repl_choices()
    except harness.Missing as e:
        pytest.fail(str(e))
    pane, _, _, _ = open_repl(terminal, context=(model, (inputs, typed, choices[0])))
    pane.wait_screen(lambda s: after_typed(typed)(s) == choices[0].rstrip(), 30, f"ghost text {choices[0]!r}")
    pane.send("M-]")
    pane.wait_screen(lambda s: after_typed(typed)(s) == choices[1].rstrip(), 30, f"the second suggestion {choices[1]!r}")
    assert f" 2/{len(choices)} · " in toolbar(pane.screen()), toolbar(pane.screen())
    pane.send("M-[")
    pane.wait_screen(lambda s: after_typed(typed)(s) == choices[0].rstrip(), 10, "back to the first")
    pane.send("M-]")
    pane.wait_screen(lambda s: after_typed(typed)(s) == choices[1].rstrip(), 10, "the second again")
    pane.send("Tab")
    wait_for(lambda: pane.cursor()[1] == len(">>> " + typed + choices[1]), 10, "the cursor after the second")
    assert prompt_line(pane.screen(), ">>> ").startswith(typed + choices[1].rstrip())


@pytest.mark.slow
def test_repl_manual_trigger_suggests_only_on_the_key(terminal):
    pane, _, typed, suggestion = open_repl(terminal, "--set", "trigger=manual")
    pane.wait_screen(lambda s: "Alt-\\ suggest" in toolbar(s), 10, "the bar to name the key")
    time.sleep(1.0)                                    # typing: no request, no ghost text
    assert prompt_line(pane.screen(), ">>> ") == typed.rstrip()
    assert " ms · " not in toolbar(pane.screen())      # nothing was computed
    pane.send("M-\\")
    ghost = pane.wait_screen(after_typed(typed), 30, "ghost text after the key")
    assert ghost == suggestion.rstrip()


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


def need_shell(shell: str) -> None:
    try:
        harness.need(LATENT, "The `latent` command (`make install`; it is the venv's console script)")
        if shell == "zsh":
            harness.need("zsh", "zsh (`make editors-deps` installs it)")
    except harness.Missing as e:
        pytest.fail(str(e))


def shell_pane(terminal, tmp_path, shell: str, model: harness.Model, **env) -> Tmux:
    """`shell` with the prompt `$ ` and editors/terminal/latent.SHELL sourced, at its prompt."""
    need_shell(shell)
    binding = EDITORS / "terminal" / f"latent.{shell}"
    rc = f"PS1='$ '\nHISTFILE={tmp_path / (shell + '_history')}\nsource {binding}\n"
    if shell == "bash":
        (tmp_path / "bashrc").write_text(rc)
        command = ["bash", "--noprofile", "--rcfile", str(tmp_path / "bashrc"), "-i"]
    else:
        (tmp_path / "zdot").mkdir(exist_ok=True)
        (tmp_path / "zdot" / ".zshrc").write_text(rc)
        command, env = ["zsh", "-i"], {"ZDOTDIR": str(tmp_path / "zdot"), **env}
    env.setdefault("LATENT_COMMAND", LATENT)
    pane = terminal(command, model, **env)
    pane.wait_screen(lambda s: prompt_line(s, "$ ") == "", 10, f"the {shell} prompt")
    return pane


def run_command(pane: Tmux, command: str) -> None:
    """Type `command` on an empty line and run it; back when the next prompt is up."""
    pane.type(command)
    pane.send("Enter")

    def done(screen):
        rows = [row.rstrip() for row in screen]
        ran = [i for i, row in enumerate(rows) if row.startswith("$ ") and command.startswith(row[2:]) and row[2:]]
        return bool(ran) and "$" in rows[ran[-1] + 1:]
    pane.wait_screen(done, 10, f"the prompt after {command!r}")


def press(pane: Tmux, line: str, timeout: float, what: str) -> float:
    """Ctrl-Space; the seconds until the command line reads `line`."""
    started = time.monotonic()
    pane.send("C-Space")
    pane.wait_screen(lambda s: prompt_line(s, "$ ") == line.rstrip(), timeout, what)
    return time.monotonic() - started


def daemon_serves(pane: Tmux) -> str:
    out = subprocess.run([LATENT, "engine", "status"], env=pane.env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"no engine daemon runs after a press: {out.stderr.strip()}"
    return out.stdout


@pytest.mark.slow
def test_bash_binding_completes_the_command_line_through_the_daemon(terminal, tmp_path):
    model, (line, suggestion) = bash_line(tmp_path / "expected")
    pane = shell_pane(terminal, tmp_path, "bash", model)
    pane.type(line)
    completed = line + suggestion
    first = press(pane, completed, 120, f"the command line to read {completed!r}")
    assert pane.cursor()[1] == len("$ " + completed), "the cursor goes after the inserted text"
    if model.answer:
        assert suggestion == model.answer
    assert "serving" in daemon_serves(pane)   # engine = auto: the model stays warm between presses
    pane.send("C-u")
    pane.type(line)
    again = press(pane, completed, 30, f"the command line to read {completed!r} again")
    print(f"bash binding: first press {first:.2f} s (starts the daemon), next {again:.2f} s")


@pytest.mark.slow
def test_bash_binding_shows_a_waiting_mark_and_says_what_failed(terminal, tmp_path):
    # a `latent` that answers when the test lets it: the mark must be on screen meanwhile
    release = tmp_path / "release"
    slow = tmp_path / "slow-latent"
    slow.write_text(f"#!/bin/sh\ncat >/dev/null\nwhile [ ! -e {release} ]; do sleep 0.05; done\nprintf ' --all'\n")
    slow.chmod(0o755)
    pane = shell_pane(terminal, tmp_path, "bash", harness.candidates()[0](), LATENT_COMMAND=str(slow))
    pane.type("git status")
    pane.send("C-Space")
    pane.wait_screen(lambda s: prompt_line(s, "$ ") == "git status latent…", 10, "the waiting mark after the line")
    release.touch()
    pane.wait_screen(lambda s: prompt_line(s, "$ ") == "git status --all", 10, "the answer in place of the mark")

    # no such command: one line says so, the command line stays as it was
    pane.send("C-u")
    run_command(pane, "LATENT_COMMAND=/nowhere/latent")
    pane.type("ls ")
    pane.send("C-Space")
    said = "latent: /nowhere/latent: command not found (set LATENT_COMMAND to the latent command)"
    screen = pane.wait_screen(lambda s: said in s and s, 10, "one line saying latent is missing")
    assert prompt_line(screen, "$ ") == "ls" and pane.cursor()[1] == len("$ ls ")

    # a model that does not load: latent's own error, in one line
    pane.send("C-u")
    run_command(pane, f"LATENT_COMMAND={LATENT}; export LATENT_MODEL={tmp_path / 'no-model'} LATENT_ENGINE=inprocess")
    pane.type("ls ")
    pane.send("C-Space")
    screen = pane.wait_screen(lambda s: any(line.startswith("latent: error: ") for line in s) and s, 60,
                              "one line with the model's error")
    errors = [line for line in screen if line.startswith("latent: error: ")]
    assert len(errors) == 1 and "no-model" in errors[0], screen
    assert prompt_line(screen, "$ ") == "ls"


@pytest.mark.slow
def test_zsh_binding_previews_the_suggestion_and_tab_takes_it(terminal, tmp_path):
    model, (line, suggestion) = bash_line(tmp_path / "expected")
    pane = shell_pane(terminal, tmp_path, "zsh", model)
    pane.type(line)
    completed = line + suggestion
    press(pane, completed, 120, f"the preview {completed!r}")
    row = [s for s in pane.screen(escapes=True) if s.startswith("$ ")][-1]
    assert harness.styled_before(row, suggestion.strip()), f"the preview is not dimmed: {row!r}"
    assert pane.cursor()[1] == len("$ " + line), "the cursor stays before the preview"
    pane.send("Tab")
    wait_for(lambda: pane.cursor()[1] == len("$ " + completed), 10, "the cursor after the accepted text")
    assert prompt_line(pane.screen(), "$ ") == completed.rstrip()
    assert "serving" in daemon_serves(pane)

    # any other key hides the preview and does what it does; Escape only hides it
    pane.send("C-u")
    pane.type(line)
    press(pane, completed, 30, f"the preview {completed!r} again")
    pane.type("x")
    pane.wait_screen(lambda s: prompt_line(s, "$ ") == line + "x", 10, "the preview gone and x typed")
    pane.send("BSpace")
    press(pane, completed, 30, f"the preview {completed!r} once more")
    pane.send("Escape")
    pane.wait_screen(lambda s: prompt_line(s, "$ ") == line.rstrip(), 10, "Escape to hide the preview")
    assert pane.cursor()[1] == len("$ " + line)


@pytest.mark.slow
def test_zsh_binding_says_when_latent_is_missing(terminal, tmp_path):
    pane = shell_pane(terminal, tmp_path, "zsh", harness.candidates()[0](), LATENT_COMMAND="/nowhere/latent")
    pane.type("ls ")
    pane.send("C-Space")
    said = "latent: /nowhere/latent: command not found (set LATENT_COMMAND to the latent command)"
    screen = pane.wait_screen(lambda s: said in s and s, 10, "one line saying latent is missing")
    assert prompt_line(screen, "$ ") == "ls"
