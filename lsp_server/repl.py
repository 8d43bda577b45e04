"""`latent repl`: an interactive Python prompt with ghost text as you type.

    latent repl [--model M] [--device D …] [--set NAME=VALUE …] [--no-history]

Keys: Tab accepts the ghost text (or indents when there is none), Ctrl-Right (or Alt-F)
accepts its next word, Right / Ctrl-E / Ctrl-F accept all of it, Escape hides it until the
next keystroke, Alt-] / Alt-[ show the next / previous of several suggestions (the first press
asks for them), Alt-\\ asks for a suggestion now (with `trigger = manual`, the only way), Up /
Down walk the history. Enter runs the input once it is a complete
statement and opens a new line inside a block. Ghost text too long for the line is shown cut
with an ellipsis (it never wraps onto a line of its own); the keys accept all of it.

The completion pipeline runs in this process (`completion.CompletionService` over the engine
the settings ask for, as `latent complete` does), so there is no server to start. The model
loads in the background: the prompt is usable at once. The bottom bar says when suggestions
are ready, how long the last one took, and why there is none when there is none. The document
the model completes is this session's inputs so far followed by the current one, as if they
were one file, so earlier definitions inform it.

History is kept in $XDG_STATE_HOME/latent/repl_history (~/.local/state/…).
"""
from __future__ import annotations

import argparse
import ast
import os
import re
import sys
import threading
import time
import traceback
from pathlib import Path

URI = "untitled:latent-repl.py"
PROMPT, CONTINUATION = ">>> ", "... "   # the same width: wrapped rows start after either
ELLIPSIS = "…"
_WORD = re.compile(r"[ \t]*\w+|[ \t]*[^\w\s]+|[ \t]+")


def history_path(env=os.environ) -> Path:
    base = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "latent" / "repl_history"


def next_word(text: str) -> str:
    """The next word of a suggestion (blanks, then a word or a run of punctuation)."""
    match = _WORD.match(text)
    return match.group(0) if match else text


def fit(text: str, room: int, width=len) -> str:
    """`text` cut to `room` columns, ending with an ellipsis when cut ('' when not even that fits).
    `width`: the columns a string takes (prompt_toolkit's get_cwidth counts wide characters)."""
    if width(text) <= room:
        return text
    if room < 2:
        return ""
    while text and width(text) > room - 1:
        text = text[:-1]
    return text + ELLIPSIS


def document_text(inputs: list[str], current: str) -> str:
    """What the model completes: earlier inputs, then the current one, as one file."""
    return "".join(text + "\n" for text in inputs) + current


def is_complete(source: str) -> bool:
    """True when Enter should run `source` (it parses, and it does not open a block)."""
    if not source.strip():
        return True
    lines = source.split("\n")
    if len(lines) > 1 and lines[-1].strip():  # inside a block: a blank line ends it
        return False
    try:
        ast.parse(source)
    except SyntaxError:
        return _definitely_broken(source)
    return not source.rstrip().endswith(":")


def _definitely_broken(source: str) -> bool:
    """A syntax error that more lines cannot fix (then Enter runs it and shows the error)."""
    try:
        import codeop

        return codeop.compile_command(source, "<latent>", "exec") is not None
    except (SyntaxError, ValueError, OverflowError):
        return True


# ---------------------------------------------------------------------------------------------
# Suggestions

class Suggester:
    """The completion pipeline for one repl: loads in the background, one request at a time,
    a newer request cancels the one running. After each answered request, `last_ms` is its
    latency and `reason` says why there was no suggestion ('' when there was one)."""

    def __init__(self, settings) -> None:
        self.settings = settings
        self.model = settings.model or "bundled"
        self.state, self.message, self.last_ms, self.reason = "loading", "loading the model…", None, ""
        self.service = None
        self._lock = threading.Lock()
        self._cancel = None
        self._version = 0
        threading.Thread(target=self._load, name="latent-load", daemon=True).start()

    def _load(self) -> None:
        from completion import CompletionService
        from lsp_server.engines import make_engine, one_sentence

        started = time.perf_counter()
        try:
            engine = make_engine(self.settings)
            self.service = CompletionService(engine, self.settings.completion_config())
        except Exception as e:  # a model that does not load leaves a plain Python prompt
            self.state, self.message = "error", one_sentence(e, self.model)
            return
        self.state = "ready"
        self.message = f"{self.model} loaded in {time.perf_counter() - started:.1f} s"

    def suggest(self, text: str, asked: bool = False) -> list[str]:
        """The first lines of the suggestions at the end of `text`, best first (none: []).
        While typing (not `asked`): at most one, after the debounce, and none with
        `trigger = manual`; asked (a key): up to `suggestions`, at once."""
        from completion.document import Lines
        from completion.types import REASONS, TextChange
        from model.protocol import CancelToken

        service, settings = self.service, self.settings
        if service is None or not settings.enable or (settings.trigger == "manual" and not asked):
            return []
        cancel = CancelToken()
        previous, self._cancel = self._cancel, cancel
        if previous is not None:
            previous.cancel()
        if not asked and settings.debounce_ms:
            time.sleep(settings.debounce_ms / 1000)   # a keystroke meanwhile cancels this one
        with self._lock:
            if cancel.cancelled:
                return []
            self._version += 1
            if service.workspace.get(URI) is None:
                service.workspace.open(URI, "python", text, self._version, "repl.py")
            else:
                service.workspace.change(URI, self._version, [TextChange(text)])
            started = time.perf_counter()
            result = service.complete(service.workspace.snapshot(URI), Lines(text).position(len(text)), cancel,
                                      count=settings.suggestions if asked else 1)
        if result.source == "cancelled" or cancel.cancelled:
            return []
        self.last_ms = (time.perf_counter() - started) * 1000
        if not result.suggestions:
            self.reason = REASONS.get(result.reason, REASONS["nothing"])
            return []
        lines = []   # the cursor is at the end: nothing to replace
        for suggestion in result.suggestions:
            line = suggestion.text.split("\n")[0] if suggestion.range.start == suggestion.range.end else ""
            if line.strip() and line not in lines:
                lines.append(line)
        self.reason = "" if lines else "The suggestion starts on a new line."
        return lines

    def toolbar(self, showing: bool = False, place: str = "") -> str:
        """The bottom bar; `showing`: whether ghost text is on screen now; `place`: which of
        several it is ("2/3")."""
        if self.state != "ready":
            return f" latent: {self.state} — {self.message} · Ctrl-D quit"
        manual = "Alt-\\ suggest · " if self.settings.trigger == "manual" else ""
        if self.last_ms is None:
            return f" latent: ready · {manual}{self.model} · Ctrl-D quit"
        said = (f"{place + ' · ' if place else ''}Tab accept · Ctrl-Right word · Alt-] next · Esc hide" if showing
                else f"no suggestion: {self.reason}" if self.reason else "Ctrl-D quit")
        return f" latent: ready · {self.last_ms:.0f} ms · {manual}{said} · {self.model}"


class Choices:
    """Several suggestions asked for with a key, for one input, and which one is shown."""

    def __init__(self) -> None:
        self.text: str | None = None   # the input they complete
        self.lines: list[str] = []
        self.index = -1                # the one shown; -1: none yet

    def reset(self, text: str, lines: list[str], shown: str | None) -> None:
        self.text, self.lines = text, lines
        self.index = lines.index(shown) if shown in lines else -1

    def move(self, step: int) -> str:
        """The suggestion `step` after the shown one (0 or none shown yet: the first)."""
        self.index = 0 if self.index < 0 else (self.index + step) % len(self.lines)
        return self.lines[self.index]

    def place(self, buffer) -> str:
        """ "2/3" while the buffer shows one of several for their input, else ''."""
        shown = buffer.suggestion.text if buffer.suggestion else None
        if buffer.text != self.text or len(self.lines) < 2 or shown not in self.lines:
            return ""
        return f"{self.lines.index(shown) + 1}/{len(self.lines)}"


# ---------------------------------------------------------------------------------------------
# Running code

class Console:
    """Runs inputs like the standard interactive interpreter (expressions print their repr)."""

    def __init__(self) -> None:
        self.namespace: dict = {"__name__": "__main__", "__builtins__": __builtins__}

    def run(self, source: str) -> None:
        try:
            tree = ast.parse(source, "<latent>", "exec")
        except SyntaxError:
            self._show_error(skip=0)
            return
        last = tree.body[-1] if tree.body else None
        shown = last.value if isinstance(last, ast.Expr) else None   # a last expression's value is printed
        if shown is not None:
            tree.body.pop()
        try:
            exec(compile(tree, "<latent>", "exec"), self.namespace)
            if shown is not None:
                value = eval(compile(ast.Expression(shown), "<latent>", "eval"), self.namespace)
                if value is not None:
                    self.namespace["_"] = value
                    print(repr(value))
        except SystemExit:
            raise
        except BaseException:
            self._show_error(skip=1)

    @staticmethod
    def _show_error(skip: int) -> None:
        kind, value, tb = sys.exc_info()
        for _ in range(skip):
            tb = tb.tb_next if tb is not None else None
        traceback.print_exception(kind, value, tb)


# ---------------------------------------------------------------------------------------------
# The prompt

def make_session(suggester: Suggester, inputs: list[str], history_file: Path | None):
    from prompt_toolkit import PromptSession
    from prompt_toolkit.application import get_app
    from prompt_toolkit.auto_suggest import AutoSuggest, Suggestion, ThreadedAutoSuggest
    from prompt_toolkit.eventloop import run_in_executor_with_context
    from prompt_toolkit.filters import Condition
    from prompt_toolkit.history import FileHistory, InMemoryHistory
    from prompt_toolkit.key_binding import KeyBindings
    from prompt_toolkit.layout.processors import Processor, Transformation
    from prompt_toolkit.lexers import PygmentsLexer
    from prompt_toolkit.styles import Style
    from prompt_toolkit.utils import get_cwidth
    from pygments.lexers.python import PythonLexer

    dismissed: str | None = None   # the input whose ghost text Escape hid, until it changes
    choices = Choices()             # the suggestions asked for with a key, for the input they fit

    class ModelSuggest(AutoSuggest):
        def get_suggestion(self, buffer, document):
            if not document.is_cursor_at_the_end or not document.text.strip() or dismissed == document.text:
                return None
            lines = suggester.suggest(document_text(inputs, document.text))
            return Suggestion(lines[0]) if lines and dismissed != document.text else None

    class FitSuggestion(Processor):
        """Cut the ghost text (AppendAutoSuggestion's last fragment) to the room left on the
        cursor's screen row, so that it never wraps onto a row that looks like an input line."""

        def apply_transformation(self, ti):
            fragments = ti.fragments
            if ti.lineno != ti.document.line_count - 1 or not fragments or fragments[-1][0] != "class:auto-suggestion":
                return Transformation(fragments)
            typed = sum(get_cwidth(text) for _, text, *_ in fragments[:-1])
            row = max(ti.width - len(PROMPT), 1)    # every screen row starts with a prompt's width
            shown = fit(fragments[-1][1], row - typed % row - 1, get_cwidth)
            return Transformation([*fragments[:-1], (fragments[-1][0], shown)])

    bindings = KeyBindings()

    @Condition
    def has_suggestion() -> bool:
        buffer = get_app().current_buffer
        return bool(buffer.suggestion and buffer.suggestion.text and buffer.document.is_cursor_at_the_end)

    # Accepting inserts text, and every insert asks the model afresh at the new cursor (the
    # buffer drops its suggestion on any change): the accepted text is never offered again.
    @bindings.add("tab", filter=has_suggestion)
    @bindings.add("right", filter=has_suggestion)
    @bindings.add("c-e", filter=has_suggestion)
    @bindings.add("c-f", filter=has_suggestion)
    def accept(event) -> None:
        buffer = event.current_buffer
        buffer.insert_text(buffer.suggestion.text)

    @bindings.add("tab", filter=~has_suggestion)
    def indent(event) -> None:
        event.current_buffer.insert_text("    ")

    @bindings.add("c-right", filter=has_suggestion)
    @bindings.add("escape", "f", filter=has_suggestion)
    def accept_word(event) -> None:
        buffer = event.current_buffer
        buffer.insert_text(next_word(buffer.suggestion.text))

    @bindings.add("escape", filter=has_suggestion)
    def dismiss(event) -> None:
        nonlocal dismissed
        buffer = event.current_buffer
        dismissed, buffer.suggestion = buffer.text, None

    async def ask(buffer, step: int) -> None:
        """Show the next (step 1) or previous (-1) of several suggestions, or the first (0); the
        first press for an input asks the model for them, off the event loop."""
        text = buffer.text
        if choices.text != text or not buffer.document.is_cursor_at_the_end:
            shown = buffer.suggestion.text if buffer.suggestion else None
            lines = await run_in_executor_with_context(suggester.suggest, document_text(inputs, text), True)
            choices.reset(text, lines, shown)
        if buffer.text == text and choices.lines:
            buffer.suggestion = Suggestion(choices.move(step))
            buffer.on_suggestion_set.fire()
        get_app().invalidate()

    def in_background(buffer, step: int) -> None:
        get_app().create_background_task(ask(buffer, step))

    @bindings.add("escape", "]")
    def next_suggestion(event) -> None:
        in_background(event.current_buffer, 1)

    @bindings.add("escape", "[")
    def previous_suggestion(event) -> None:
        in_background(event.current_buffer, -1)

    @bindings.add("escape", "\\")
    def suggest_now(event) -> None:
        in_background(event.current_buffer, 0)

    def undismiss(_buffer) -> None:
        nonlocal dismissed
        dismissed = None

    @bindings.add("enter")
    def enter(event) -> None:
        buffer = event.current_buffer
        if buffer.document.is_cursor_at_the_end and is_complete(buffer.text):
            buffer.validate_and_handle()
            return
        line = buffer.document.current_line_before_cursor
        indent_ = line[:len(line) - len(line.lstrip(" \t"))]
        if line.rstrip().endswith(":"):
            indent_ += "    "
        buffer.insert_text("\n" + indent_)

    history = FileHistory(str(history_file)) if history_file is not None else InMemoryHistory()
    session = PromptSession(
        message=lambda: PROMPT, prompt_continuation=lambda width, line, wrap: CONTINUATION,
        multiline=True, history=history, auto_suggest=ThreadedAutoSuggest(ModelSuggest()),
        input_processors=[FitSuggestion()], key_bindings=bindings, lexer=PygmentsLexer(PythonLexer),
        bottom_toolbar=lambda: suggester.toolbar(has_suggestion(), choices.place(get_app().current_buffer)),
        refresh_interval=0.5,
        style=Style.from_dict({"auto-suggestion": "#808080 italic", "bottom-toolbar": "noreverse #808080"}),
    )
    # Escape alone hides the ghost text: wait briefly for the key after it (Alt-F arrives as
    # Escape + f at once), not prompt_toolkit's default second and a half
    session.app.ttimeoutlen, session.app.timeoutlen = 0.05, 0.3
    session.default_buffer.on_text_changed += undismiss   # a keystroke brings suggestions back
    return session


def make_parser() -> argparse.ArgumentParser:
    from lsp_server import settings

    parser = argparse.ArgumentParser(prog="latent repl", description=(
        "An interactive Python prompt with the model's ghost text: Tab accepts it, Ctrl-Right "
        "accepts a word. Settings come from the config file and LATENT_* variables, then from here."))
    parser.add_argument("--no-history", action="store_true", help="keep no history file")
    settings.add_arguments(parser)
    return parser


def settings_from(args):
    """The settings `latent repl ARGS` runs with (as `latent complete` reads them); a bad
    flag ends the repl with one line, other problems are printed as warnings."""
    from lsp_server.settings import from_command_line

    try:
        settings, _, warnings = from_command_line(args)
    except ValueError as e:
        raise SystemExit(f"latent repl: error: {e}") from None
    for warning in warnings:
        print(f"latent repl: {warning}", file=sys.stderr)
    return settings


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if not sys.stdin.isatty():
        print("latent repl: error: stdin is not a terminal (use `latent complete --stdin` in scripts)",
              file=sys.stderr)
        return 2
    settings = settings_from(args)
    history_file = None if args.no_history else history_path()
    if history_file is not None:
        history_file.parent.mkdir(parents=True, exist_ok=True)
    suggester = Suggester(settings)
    inputs: list[str] = []
    session = make_session(suggester, inputs, history_file)
    console = Console()
    print(f"Latent repl on Python {sys.version.split()[0]} — Tab accepts the ghost text, Ctrl-D quits.")
    while True:
        try:
            source = session.prompt()
        except KeyboardInterrupt:
            continue
        except EOFError:
            return 0
        if not source.strip():
            continue
        inputs.append(source.rstrip("\n"))
        try:
            console.run(source)
        except SystemExit as e:
            return e.code if isinstance(e.code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
