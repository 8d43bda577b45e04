"""The VS Code extension in real VS Code: code-server 4.100.3 (VS Code 1.100.3) installs the
packaged .vsix, headless Chromium (playwright-core) opens a Python file, types, waits for the
ghost text, accepts it with Tab and reads the line back; screenshots go to artifacts/editors/.
"""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from editors.testing import harness  # noqa: E402
from editors.testing.harness import DEPS, EDITORS, wait_for  # noqa: E402

CODE_SERVER = DEPS / "code-server" / "node_modules" / ".bin" / "code-server"
PLAYWRIGHT = DEPS / "code-server" / "node_modules" / "playwright-core" / "package.json"
VSIX = EDITORS / "vscode" / "latent.vsix"
CHROMIUM = Path("/usr/lib/chromium/chromium")
ARTIFACTS = harness.ROOT / "artifacts" / "editors"

SETTINGS = {
    "workbench.startupEditor": "none",
    "workbench.tips.enabled": False,
    "workbench.enableExperiments": False,
    "security.workspace.trust.enabled": False,
    "telemetry.telemetryLevel": "off",
    "extensions.autoUpdate": False,
    "extensions.autoCheckUpdates": False,
    "update.mode": "none",
    "editor.inlineSuggest.enabled": True,
    # no word-based suggest widget: Tab must reach the ghost text
    "editor.quickSuggestions": {"other": False, "comments": False, "strings": False},
    "editor.suggestOnTriggerCharacters": False,
    "editor.wordBasedSuggestions": "off",
    "editor.autoClosingBrackets": "never",
    "editor.autoClosingQuotes": "never",
    "files.autoSave": "off",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_vscode_shows_ghost_text_and_tab_accepts_it(tmp_path):
    try:
        for path, what in ((CODE_SERVER, "code-server"), (PLAYWRIGHT, "playwright-core"), (CHROMIUM, "chromium"),
                           (VSIX, "The extension package (editors/vscode/latent.vsix)")):
            harness.need(path, what)
        harness.need("node", "Node.js")
        model, (before, typed, suggestion) = harness.python_context()
    except harness.Missing as e:
        pytest.fail(str(e))
    env = harness.clean_env(tmp_path, model)
    user, extensions, work = tmp_path / "user-data", tmp_path / "extensions", tmp_path / "work"
    for folder in (user / "User", extensions, work / ".git"):
        folder.mkdir(parents=True)
    (work / "demo.py").write_text(before)
    settings = dict(SETTINGS, **{"latent.server.pythonPath": harness.PYTHON, "latent.threads": harness.THREADS})
    if model.path:
        settings["latent.model"] = model.path
    (user / "User" / "settings.json").write_text(json.dumps(settings, indent=2))
    config = tmp_path / "code-server.yaml"
    config.write_text("auth: none\ncert: false\n")
    common = [str(CODE_SERVER), "--config", str(config), "--user-data-dir", str(user),
              "--extensions-dir", str(extensions)]
    installed = subprocess.run(common + ["--install-extension", str(VSIX)], env=env, capture_output=True,
                               text=True, timeout=120)
    assert installed.returncode == 0, installed.stdout + installed.stderr

    port = free_port()
    log = open(tmp_path / "code-server.log", "w")
    server = subprocess.Popen(common + ["--auth", "none", "--bind-addr", f"127.0.0.1:{port}",
                                        "--disable-telemetry", "--disable-update-check",
                                        "--disable-workspace-trust", "--disable-getting-started-override",
                                        str(work)], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        def listening():
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0
        wait_for(listening, 60, "code-server to listen")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        ui = subprocess.run(
            ["node", str(EDITORS / "vscode" / "test" / "ui.mjs"), f"http://127.0.0.1:{port}/?folder={work}",
             "demo.py", typed, str(ARTIFACTS)],
            env={**env, "PLAYWRIGHT_CORE": str(PLAYWRIGHT), "CHROMIUM": str(CHROMIUM)},
            capture_output=True, text=True, timeout=150)
        lines = [line for line in ui.stdout.splitlines() if line.startswith("{")]
        result = json.loads(lines[-1]) if lines else {}
        assert ui.returncode == 0 and "error" not in result, (
            f"{result.get('error') or ui.stderr[-2000:]}\n(screenshots in {ARTIFACTS}; "
            f"code-server log {tmp_path / 'code-server.log'})")
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
        shutil.copy(tmp_path / "code-server.log", ARTIFACTS / "vscode-code-server.log") if ARTIFACTS.is_dir() else None

    typed_line = before.split("\n")[-1] + typed
    first_line = suggestion.split("\n")[0]
    assert result["statusBar"].startswith("Latent"), result
    assert result["ghost"] == first_line, f"ghost text {result['ghost']!r}, the pipeline suggests {first_line!r}"
    if model.answer:
        assert result["ghost"] == model.answer
    assert result["lineAfterTab"] == typed_line + first_line, result
    saved = (work / "demo.py").read_text().split("\n")[before.count("\n")]
    assert saved == typed_line + first_line, f"the saved line is {saved!r}"
