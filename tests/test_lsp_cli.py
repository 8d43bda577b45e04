"""The `latent` command: `complete` prints the pipeline's suggestion and nothing else; every
error is one line on stderr with exit status 2; `--help` works everywhere."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from lsp_helpers import ROOT, SUGGESTS, SUGGESTS_LANGUAGE, THREADS, expected, model_path, server_env
from lsp_server.cli import main

CANDIDATES = (SUGGESTS, "import os\n\nfor name in ")


def _model_args() -> list[str]:
    return ["--model", model_path()] if model_path() else []


def _run(tmp_path, *args, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lsp_server", *args, *_model_args()], input=stdin,
                          capture_output=True, text=True, cwd=tmp_path, env=server_env(tmp_path), timeout=120)


def _case(folder, uri_of):
    """A file, its 1-based end position and the pipeline's (non-empty) suggestion there, for a
    document known by the URI uri_of(file)."""
    for i, text in enumerate(CANDIDATES):
        file = folder / f"sample{i}.py"          # a language the model declares (the bundled one: Python)
        file.write_text(text)
        lines = text.split("\n")
        line, character = len(lines) - 1, len(lines[-1])
        want = expected([(uri_of(file), SUGGESTS_LANGUAGE, text)], uri_of(file), line, character)
        if want:
            return file, text, line + 1, character + 1, want[0][0]
    pytest.fail("the model suggests nothing for any candidate text")


def test_complete_file_line_col_prints_only_the_suggestion(tmp_path):
    file, _, line, col, want = _case(tmp_path, lambda f: f.as_uri())
    done = _run(tmp_path, "complete", f"{file.name}:{line}:{col}")
    assert done.returncode == 0, done.stderr
    assert done.stdout == want


def test_complete_from_stdin_at_the_end_or_at_a_position(tmp_path):
    file, text, line, col, want = _case(tmp_path, lambda f: "untitled:stdin")
    done = _run(tmp_path, "complete", "--stdin", "--language", SUGGESTS_LANGUAGE, stdin=text)
    assert (done.returncode, done.stdout) == (0, want), done.stderr
    done = _run(tmp_path, "complete", "--stdin", "--language", SUGGESTS_LANGUAGE, "--at", f"{line}:{col}", stdin=text)
    assert (done.returncode, done.stdout) == (0, want), done.stderr


def test_complete_explain_says_why_and_how_long_on_stderr_only(tmp_path):
    file, text, line, col, want = _case(tmp_path, lambda f: f.as_uri())
    done = _run(tmp_path, "complete", "-v", f"{file.name}:{line}:{col}")
    assert (done.returncode, done.stdout) == (0, want), done.stderr
    explained = done.stderr.strip().splitlines()
    assert explained[0].startswith("latent: ") and "answered by model" in explained[0]
    assert "loaded in" in explained[1] and " ms" in explained[1] and "{" not in done.stderr   # no raw dict
    inside = _run(tmp_path, "complete", "-v", "--stdin", "--language", "python", "--at", "1:6", stdin="x = abc")
    assert inside.stdout == "" and "no suggestion — The cursor is inside a word." in inside.stderr


def test_complete_decides_a_skip_before_loading_the_model(tmp_path, capfd):
    """The shell bindings ask on every key press: where no model could answer (inside a word,
    code after the cursor), the answer comes without loading one — here, a model that is not
    even there."""
    (tmp_path / "f.py").write_text('import os\nx = os.path.join("a", "b")\n')
    missing = str(tmp_path / "no-model")
    for position in ("2:11", "2:5"):   # inside `path`; before `os.path.join(…)`
        assert main(["complete", "-v", f"{tmp_path / 'f.py'}:{position}", "--model", missing]) == 0
        out, err = capfd.readouterr()
        assert out == "" and "(the model was not loaded)" in err
    assert main(["complete", f"{tmp_path / 'f.py'}:3:1", "--model", missing]) == 2   # a real request loads it
    assert "does not exist" in capfd.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["complete", "nowhere.py"], "FILE:LINE:COL"),
    (["complete", "{missing}:1:1"], "cannot read"),
    (["complete", "{binary}:1:1"], "not UTF-8"),
    (["complete", "{file}:9:1"], "line 9 is past the end"),
    (["complete", "{file}:1:99"], "column 99 is past the end of line 1"),
    (["complete", "{file}:0:1"], "positive"),
    (["complete", "--stdin"], "--language"),
    (["complete", "{file}:1:1", "--stdin", "--language", "python"], "either"),
    (["complete", "{file}:1:1", "--set", "colour=blue"], "--set"),
    (["complete", "{file}:1:1", "--set", "temprature=0.2"], "did you mean 'temperature'?"),
    (["complete", "{file}:1:1", "--set", "temperature=hot"], "temperature"),
    (["complete", "{file}:2:1", "--model", "{missing}"], "does not exist"),
    (["info", "--dtype", "float8"], "dtype"),
    (["lsp", "--tcp", "nohost"], "HOST:PORT"),
    (["frobnicate"], "invalid choice"),
    ([], "a command is required"),
])
def test_errors_are_one_line_on_stderr_with_status_2(tmp_path, capfd, args, message):
    (tmp_path / "f.py").write_text("x = 1\n")
    (tmp_path / "b.bin").write_bytes(b"\xff\xfe\x00\x81")
    names = {"file": tmp_path / "f.py", "binary": tmp_path / "b.bin", "missing": tmp_path / "missing.py"}
    assert main([a.format(**names) for a in args]) == 2
    out, err = capfd.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("latent: error: ") and message in err


@pytest.mark.parametrize("args", [[], ["lsp"], ["complete"], ["info"], ["repl"], ["train"], ["engine"]])
def test_help_everywhere(capfd, args):
    assert main([*args, "--help"]) == 0
    assert "usage" in capfd.readouterr().out.lower()


def test_info_describes_the_model_and_the_cache_budget(capfd):
    assert main(["info", "--json", "--set", "cache_mb=64", *_model_args()]) == 0
    info = json.loads(capfd.readouterr().out)
    assert info["parameters"] > 0 and info["cache_budget_bytes"] == 64 << 20
    assert info["model"] == (model_path() or "bundled")
    assert main(["info", *_model_args()]) == 0
    [fim] = [line for line in capfd.readouterr().out.splitlines() if line.startswith("fim format")]
    if info["fim_layouts"]:   # the text says what --json says: the model's own layouts, or none
        assert all(layout in fim for layout in info["fim_layouts"]) and "declared" in fim
    else:
        assert "not declared" in fim


def test_the_console_script_is_declared():
    assert 'latent = "lsp_server.cli:main"' in (ROOT / "pyproject.toml").read_text()


def test_lsp_accepts_the_stdio_flag_clients_pass():
    """vscode-languageclient's stdio transport appends --stdio to the server's command."""
    import json as _json
    import subprocess as _subprocess
    import sys as _sys

    body = _json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize",
                        "params": {"processId": None, "rootUri": None, "capabilities": {}}}).encode()
    frame = b"Content-Length: %d\r\n\r\n" % len(body) + body
    proc = _subprocess.run([_sys.executable, "-m", "lsp_server", "lsp", "--stdio"], input=frame,
                           capture_output=True, timeout=60)
    assert b'"id":1' in proc.stdout.replace(b" ", b"") and b"capabilities" in proc.stdout


def test_complete_says_once_why_a_language_the_model_was_not_trained_on_gets_nothing(tmp_path):
    import shutil

    from model.loader import BUNDLED_DIR

    folder = tmp_path / "python-only"
    shutil.copytree(model_path() or BUNDLED_DIR, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "languages": ["python"]}))
    args = ["complete", "--stdin", "--language", "javascript", "--model", str(folder)]
    done = subprocess.run([sys.executable, "-m", "lsp_server", *args], input="let total = ", capture_output=True,
                          text=True, cwd=tmp_path, env=server_env(tmp_path), timeout=120)
    assert done.returncode == 0 and done.stdout == ""
    assert done.stderr.strip().splitlines()[-1] == (
        "latent: no suggestion: The model was not trained on this language (the setting all_languages turns it on).")


@pytest.mark.parametrize("config, env, warning", [
    ("max_promt_tokens = 100\n", {}, "Unknown setting 'max_promt_tokens' is ignored; did you mean 'max_prompt_tokens'?"),
    ("x = [\n", {}, "was not read"),
    (None, {"LATENT_CONFIG": "{tmp}/missing.toml"}, "named by LATENT_CONFIG does not exist"),
    ("", {"LATENT_ENGINE": "bogus"}, "Setting 'engine' cannot be 'bogus'"),
])
def test_configuration_problems_are_said_on_stderr_by_the_command_line(tmp_path, config, env, warning):
    """`latent info` and `latent complete` once ignored them silently (exit 0, nothing said)."""
    file = tmp_path / "config.toml"
    if config is not None:
        file.write_text(config)
    environment = {**server_env(tmp_path), "LATENT_CONFIG": str(file),
                   **{k: v.format(tmp=tmp_path) for k, v in env.items()}}
    done = subprocess.run([sys.executable, "-m", "lsp_server", "info", *_model_args()], capture_output=True,
                          text=True, cwd=tmp_path, env=environment, timeout=120)
    assert done.returncode == 0 and "parameters" in done.stdout
    assert any(line.startswith("latent: warning: ") and warning in line for line in done.stderr.splitlines()), done.stderr


def test_info_names_its_config_file_and_the_prompt_settings(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text("max_prompt_tokens = 1024\n")
    environment = {**server_env(tmp_path), "LATENT_CONFIG": str(config)}
    done = subprocess.run([sys.executable, "-m", "lsp_server", "info", *_model_args()], capture_output=True,
                          text=True, cwd=tmp_path, env=environment, timeout=120)
    rows = dict(line.split(None, 1) for line in done.stdout.splitlines() if line.strip())
    assert rows["config"] == f"{config} (read)"
    assert rows["prompt"].startswith("1024 tokens, 75% before the cursor")


@pytest.mark.slow
def test_complete_exits_cleanly_while_the_compiled_step_loads_on_a_busy_machine(tmp_path, monkeypatch):
    """Issue #20: with a compiled decode step in the cache, a `latent complete` that exits at once
    (a skip: the cursor inside a word; or the spm layout) aborted with "terminate called without
    an active exception" (status 134): the loader thread was still inside a PyTorch call when
    the interpreter finalized. Two busy loops beside it make the race show every time. (A skip
    no longer loads the model at all, so the runs here ask where the model answers.)"""
    from model.engine import Engine
    from model.params import RuntimeConfig

    env = {**server_env(tmp_path), "LATENT_COMPILE": "true"}
    monkeypatch.setenv("XDG_CACHE_HOME", env["XDG_CACHE_HOME"])   # the folder the command reads
    compiled = Engine.load(model_path(), RuntimeConfig(threads=THREADS, compile=True))
    assert compiled.forward.wait(timeout=600), compiled.forward.state
    [package] = (tmp_path / "xdg-cache" / "latent" / "compiled").glob("*.pt2")
    os.utime(package, (1, 1))                  # a run that loads it touches it again

    (tmp_path / "f.py").write_text("import os\n\ndef f(a, b):\n    return a\n")
    runs = [["f.py:4:13"], ["--set", "fim_layout=spm", "f.py:4:13"]] * 2
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        for args in runs:
            done = subprocess.run([sys.executable, "-m", "lsp_server", "complete", *args, *_model_args()],
                                  capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
            assert done.returncode == 0, (args, done.returncode, done.stderr[-500:])
    finally:
        for loop in busy:
            loop.kill()
            loop.wait()
    assert package.stat().st_mtime > 1         # the runs did load the compiled step (the race was run)
