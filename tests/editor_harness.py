"""What the editor tests share: where the installed editors are, the model they serve, a clean
environment (XDG folders in a temporary directory), and a tmux pane to watch a terminal the
way a person does (`capture-pane`).

Everything here is installed by `editors/install-test-deps.sh` (`make -C editors deps`); a
missing piece fails the test with the command that installs it, never a skip.
"""
from __future__ import annotations

import functools
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
import warnings
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
EDITORS = ROOT / "editors"
DEPS = EDITORS / ".deps"
BUNDLED = ROOT / "model" / "bundled"
INSTALL = "make -C editors deps"
PYTHON = sys.executable
THREADS = 1  # two shared cores: one torch thread for the server, one left for the editor


class Missing(Exception):
    """A prerequisite of an editor test is not installed (the message says how to fix it)."""


def need(path: Path | str, what: str) -> str:
    """`path` (a file, or a command on PATH) if it is there, else Missing."""
    found = Path(path) if Path(path).is_absolute() else shutil.which(str(path))
    if found is None or not Path(found).exists():
        raise Missing(f"{what} is not installed ({path} is missing): run `{INSTALL}`.")
    return str(found)


# ---------------------------------------------------------------------------------------------
# The model

class Model(NamedTuple):
    path: str | None      # the `model` setting; None: the bundled model
    name: str             # "bundled", "parrot" or the folder
    answer: str | None    # the text it always suggests (the parrot), else None


def candidates() -> list:
    """The models to try, in order, as functions that return a Model (building it if need be).

    LATENT_EDITOR_TEST_MODEL: `auto` (default) — the bundled model, and the parrot checkpoint
    (parrot_model.py) where the bundled one suggests nothing for a test's contexts; `bundled`;
    `parrot`; or a checkpoint folder."""
    choice = os.environ.get("LATENT_EDITOR_TEST_MODEL", "auto")

    def bundled() -> Model:
        if not (BUNDLED / "config.json").is_file():
            raise Missing(f"The bundled model is missing from {BUNDLED}: run `latent train`, or set "
                          f"LATENT_EDITOR_TEST_MODEL=parrot (or a checkpoint folder).")
        return Model(None, "bundled", None)

    def parrot() -> Model:
        import parrot_model

        return Model(str(parrot_model.build(DEPS / "parrot-model")), "parrot", parrot_model.ANSWER)

    if choice == "auto":
        return [bundled, parrot] if (BUNDLED / "config.json").is_file() else [parrot]
    if choice in ("bundled", "parrot"):
        return [{"bundled": bundled, "parrot": parrot}[choice]]
    if not (Path(choice) / "config.json").is_file():
        raise Missing(f"LATENT_EDITOR_TEST_MODEL={choice} is not a checkpoint folder.")
    return [lambda: Model(choice, choice, None)]


_picked: dict = {}


def pick(what: str, find) -> tuple[Model, object]:
    """The first model (of `candidates()`) for which `find(model)` returns something truthy —
    a place where the model suggests text — and that something. Cached per `what`."""
    if what not in _picked:
        tried = []
        for make in candidates():
            model = make()
            found = find(model)
            if found:
                if tried:
                    warnings.warn(f"The {', '.join(tried)} model suggests nothing for the {what} test "
                                  f"contexts; the test uses the {model.name} model.")
                _picked[what] = (model, found)
                break
            tried.append(model.name)
        else:
            raise AssertionError(f"No test model ({', '.join(tried)}) suggests anything for the {what} "
                                 f"test contexts; an editor cannot show ghost text for them.")
    return _picked[what]


@functools.cache
def load_engine(path: str | None):
    from model.engine import Engine
    from model.params import RuntimeConfig

    return Engine.load(path, RuntimeConfig(threads=THREADS, compile=False))   # as the servers under test


# Lines of Python a user might be typing, each split where the test starts typing.
CONTEXTS = [
    ("import os\n\n\ndef main():\n    path = ", "os.path"),
    ("import sys\n\n", "print"),
    ("def add(a, b):\n    return ", "a"),
    ("import os\n\nfor name in ", "os"),
    ("x = ", "1"),
]


def python_context(after: str = "") -> tuple[Model, tuple[str, str, str]]:
    """(model, (text before, text to type, the pipeline's suggestion there)) for the first of
    CONTEXTS where a test model suggests something (the pipeline runs in-process). `after`:
    the text the editor keeps after the cursor (Neovim ends every buffer with a line break)."""
    def find(model: Model):
        from completion import CompletionService
        from completion.document import Lines

        service = CompletionService(load_engine(model.path))
        for i, (before, typed) in enumerate(CONTEXTS):
            text = before + typed
            uri = f"file:///latent-editor-test/demo{i}.py"
            service.workspace.open(uri, "python", text + after, 1, "demo.py")
            result = service.complete(service.workspace.snapshot(uri), Lines(text + after).position(len(text)))
            if result.suggestions and result.suggestions[0].text.strip():
                return before, typed, result.suggestions[0].text
        return None

    return pick(f"Python editor{after!r}", find)


def styled_before(screen_line: str, text: str) -> bool:
    """Whether `text` on a captured screen line (with escapes) starts right after a change of
    style — ghost text is drawn in its own colour."""
    at = screen_line.rfind(text)
    return at > 0 and re.search(r"\x1b\[[\d;]*m$", screen_line[:at]) is not None


# ---------------------------------------------------------------------------------------------
# Environment

def clean_env(tmp: Path, model: Model, **extra: str) -> dict[str, str]:
    """The environment of an editor under test: XDG folders and HOME in `tmp`, the test model
    for the server (LATENT_* variables), the repository importable, one torch thread."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LATENT_", "XDG_", "NVIM", "TMUX"))}
    for name in ("CONFIG", "CACHE", "DATA", "STATE", "RUNTIME"):
        folder = tmp / f"xdg-{name.lower()}"
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        env[f"XDG_{name}_DIR" if name == "RUNTIME" else f"XDG_{name}_HOME"] = str(folder)
    env["HOME"] = str(tmp / "home")
    (tmp / "home").mkdir(exist_ok=True)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env["PATH"] = os.pathsep.join([str(Path(PYTHON).parent), env.get("PATH", "")])
    env["LATENT_THREADS"] = str(THREADS)
    env["LATENT_COMPILE"] = "false"   # eager, as the in-process pipeline the screens are compared with
    env["TERM"] = "xterm-256color"
    if model.path is not None:
        env["LATENT_MODEL"] = model.path
    env.update(extra)
    return env


def server_command() -> list[str]:
    """The language server, from this checkout (the same as `latent lsp`)."""
    return [PYTHON, "-m", "lsp_server", "lsp"]


def stop_daemon(env: dict[str, str]) -> None:
    """Stop the engine daemon a test started (engine = auto) in its private XDG_RUNTIME_DIR."""
    if (Path(env["XDG_RUNTIME_DIR"]) / "latent" / "engine.sock").exists():
        subprocess.run([PYTHON, "-m", "lsp_server", "engine", "stop"], env=env, capture_output=True, timeout=60)


# ---------------------------------------------------------------------------------------------
# A terminal

def wait_for(check, timeout: float, what: str, interval: float = 0.1):
    """Poll `check()` until it returns something truthy; AssertionError naming `what` after."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"Timed out after {timeout:.0f} s waiting for {what}.")


class Tmux:
    """One detached tmux session on a private socket, running `command` in a WxH pane."""

    def __init__(self, command: list[str], env: dict[str, str], cwd: Path, width: int = 100,
                 height: int = 30) -> None:
        need("tmux", "tmux")
        self.socket = str(Path(env["XDG_RUNTIME_DIR"]) / f"tmux-{uuid.uuid4().hex[:8]}")
        self.env = env
        self.target = "latent-test"
        # -f /dev/null: no user tmux.conf; the command runs with exactly `env`
        self._tmux("-f", "/dev/null", "new-session", "-d", "-s", self.target, "-x", str(width),
                   "-y", str(height), "-c", str(cwd), "env", "-i",
                   *[f"{k}={v}" for k, v in env.items()], *command)
        self._tmux("set-option", "-t", self.target, "remain-on-exit", "on")

    def _tmux(self, *args: str) -> str:
        out = subprocess.run(["tmux", "-S", self.socket, *args], capture_output=True, text=True,
                             env={**os.environ, "TMUX": ""}, timeout=20)
        if out.returncode != 0:
            raise RuntimeError(f"tmux {' '.join(map(shlex.quote, args[:4]))}…: {out.stderr.strip()}")
        return out.stdout

    def send(self, *keys: str) -> None:
        """tmux key names: Enter, Tab, C-Right, …"""
        self._tmux("send-keys", "-t", self.target, *keys)

    def type(self, text: str) -> None:
        self._tmux("send-keys", "-t", self.target, "-l", text)

    def screen(self, escapes: bool = False) -> list[str]:
        out = self._tmux("capture-pane", "-t", self.target, "-p", *(["-e"] if escapes else []))
        return out.split("\n")

    def cursor(self) -> tuple[int, int]:
        out = self._tmux("display-message", "-t", self.target, "-p", "#{cursor_y} #{cursor_x}")
        y, x = out.split()
        return int(y), int(x)

    def wait_screen(self, check, timeout: float, what: str):
        """Poll the screen (lines) with `check` until it returns something truthy."""
        def look():
            screen = self.screen()
            if any(line.startswith("Pane is dead") for line in screen):
                raise AssertionError(f"The program in the terminal ended while waiting for {what}.")
            return check(screen)

        try:
            return wait_for(look, timeout, what)
        except AssertionError as e:
            raise AssertionError(f"{e}\nThe screen:\n" + "\n".join(self.screen()).rstrip()) from None

    def save(self, path: Path) -> None:
        """The screen with colours (ANSI), for a person to look at later."""
        path.write_text("\n".join(self.screen(escapes=True)))

    def close(self) -> None:
        subprocess.run(["tmux", "-S", self.socket, "kill-server"], capture_output=True, timeout=20)
