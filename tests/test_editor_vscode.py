"""The VS Code extension in real VS Code: code-server 4.100.3 (VS Code 1.100.3) installs the
packaged .vsix, headless Chromium (playwright-core) drives it as a person would — open a Python
file, type, wait for the ghost text, press the keys — and reads back the editor, the status bar,
the notifications and the "Latent" output channel's log; screenshots go to artifacts/editors/.

One code-server and one browser run serve every test here (editors/vscode/test/ui.mjs plays the
scenarios in turn, each in its own file); each test asserts on its scenario's part. The server
is started as `latent.server.path = ~/bin/latent` (a link to the venv's `latent`) with
`latent.logLevel = debug`, so that the log names every inline request that reaches it.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import warnings
from pathlib import Path

import pytest

import editor_harness as harness
from editor_harness import DEPS, EDITORS, wait_for

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


def suggestions(model: harness.Model, name: str, text: str, count: int = 1):
    """The pipeline's answer (in-process) for `text` ending at the cursor, in a file `name`."""
    from completion import CompletionService
    from completion.document import Lines

    service = CompletionService(harness.load_engine(model.path))
    uri = f"file:///latent-editor-test/{name}"
    service.workspace.open(uri, "python", text, 1, name)
    return service.complete(service.workspace.snapshot(uri), Lines(text).position(len(text)), count=count)


# VS Code's default word definition (Python's language configuration sets none), as
# editor.action.inlineSuggest.acceptNextWord uses it (\w and \d are ASCII in JavaScript)
VSCODE_WORD = re.compile(r"(-?[0-9]*\.[0-9][0-9A-Za-z_]*)|([^`~!@#$%^&*()\-=+\[{\]}\\|;:'\",.<>/?\s]+)")


def next_word(text: str) -> str:
    """What Ctrl+Right (acceptNextWord) takes of ghost text `text`, as VS Code 1.100 computes it:
    the word it starts with, else what comes before the first word, but no further than the
    end of the first run of whitespace."""
    word = VSCODE_WORD.search(text)
    end = len(text) if word is None else word.end() if word.start() == 0 else word.start()
    space = re.search(r"\s+", text)
    if space and space.end() < end:
        end = space.end()
    return text[:end]


# Block headers: where Enter (VS Code indents after one) asks for a block, maybe several lines
BLOCKS = ["class Point:", "def fib(n):", "def main():", "def add(a, b):", "for i in range(10):",
          "import os\n\n\ndef main():", "import sys\n\n\ndef main():", "while True:", "try:"]
LINE_FILES = ["line.py", "lines.py", "next_line.py", "point.py"]


def contexts(model: harness.Model) -> dict:
    """Where the scenarios type, for `model`: `cycle` where asking gives two one-line
    suggestions; `twice` where accepting the suggestion makes the model say it again (the
    server must not offer it twice), else any place with a suggestion; `previous` as `cycle`,
    with ghost text while typing; `word` where the suggestion is more than its next word;
    `line` (in file `lineFile`; `multiline`: whether it is) where the suggestion has several
    lines, else one. Each predicted in the file the scenario types in (its name is in the
    prompt), alone; in VS Code the other open files join the prompt, so the tests compare with
    what the editor showed, not with these texts."""
    out = {}
    for before, typed in harness.CONTEXTS:
        texts = [s.text for s in suggestions(model, "cycle.py", before + typed, count=3).suggestions]
        if len(texts) >= 2 and all(t.strip() and "\n" not in t for t in texts[:2]) and texts[0] != texts[1]:
            out["cycle"] = (before, typed)
            break
    else:
        raise AssertionError(f"The {model.name} model offers no two one-line suggestions in any test context.")
    candidates = []
    for before, typed in harness.CONTEXTS:
        first = suggestions(model, "twice.py", before + typed).suggestions
        if first and first[0].text.strip():
            candidates.append((suggestions(model, "twice.py", before + typed + first[0].text).reason == "echo",
                               (before, typed)))
    assert candidates, f"The {model.name} model suggests nothing in the test contexts."
    out["twice"] = max(candidates, key=lambda c: c[0])[1]
    # `previous`: ghost text while typing, and two one-line suggestions when asked
    for before, typed in harness.CONTEXTS:
        first = suggestions(model, "previous.py", before + typed).suggestions
        texts = [s.text for s in suggestions(model, "previous.py", before + typed, count=3).suggestions]
        if (first and first[0].text.strip() and len(texts) >= 2 and texts[0] != texts[1]
                and all(t.strip() and "\n" not in t for t in texts[:2])):
            out["previous"] = (before, typed)
            break
    else:
        raise AssertionError(f"The {model.name} model offers no two one-line suggestions in any test context "
                             f"(previous.py).")
    # `word`: a one-line suggestion Ctrl+Right takes only part of, a word if any
    words = []
    for before, typed in harness.CONTEXTS:
        first = suggestions(model, "word.py", before + typed).suggestions
        text = first[0].text if first else ""
        if text.strip() and "\n" not in text and 0 < len(next_word(text)) < len(text):
            words.append((not VSCODE_WORD.fullmatch(next_word(text)), (before, typed)))
    assert words, f"The {model.name} model offers no one-line suggestion of several words in any test context."
    out["word"] = min(words, key=lambda w: w[0])[1]
    # `line`: Enter after a block header, where the first suggestion has several lines (in a
    # file of one of LINE_FILES: the name is in the prompt); else where it has one (Shift+Tab
    # then accepts all of it)
    for name, header in ((name, header) for name in LINE_FILES for header in BLOCKS):
        indent = " " * (len(header.split("\n")[-1]) - len(header.split("\n")[-1].lstrip()) + 4)
        first = suggestions(model, name, header + "\n" + indent).suggestions
        if first and "\n" in first[0].text and first[0].text.split("\n")[0].strip():
            out["line"], out["lineFile"], out["multiline"] = (header, "\n"), name, True
            break
    else:
        warnings.warn(f"The {model.name} model suggests no several lines after any of the block headers; "
                      f"Shift+Tab is tested on a one-line suggestion only.")
        single = [(before, typed) for before, typed in harness.CONTEXTS
                  if any(s.text.strip() for s in suggestions(model, LINE_FILES[0], before + typed).suggestions)]
        out["line"], out["lineFile"], out["multiline"] = (single or [candidates[0][1]])[0], LINE_FILES[0], False
    return out


@pytest.fixture(scope="module")
def vscode(tmp_path_factory):
    """Run every scenario once; {"result": what ui.mjs saw, "log": the Latent output channel, …}."""
    tmp = tmp_path_factory.mktemp("vscode")
    try:
        for path, what in ((CODE_SERVER, "code-server"), (PLAYWRIGHT, "playwright-core"), (CHROMIUM, "chromium"),
                           (VSIX, "The extension package (editors/vscode/latent.vsix)")):
            harness.need(path, what)
        harness.need("node", "Node.js")
        latent = harness.need(Path(harness.PYTHON).parent / "latent", "The `latent` command (pip install -e .)")
        model, (before, typed, suggestion) = harness.python_context()
        places = contexts(model)
    except harness.Missing as e:
        pytest.fail(str(e))
    env = harness.clean_env(tmp, model)
    home = Path(env["HOME"])
    # `latent` where `make install-user` links it, on no PATH the editor has: as for an editor
    # started from a desktop menu, whose PATH lacks what ~/.bashrc adds
    (home / ".local" / "bin").mkdir(parents=True)
    (home / ".local" / "bin" / "latent").symlink_to(latent)
    env["PATH"] = os.pathsep.join(d for d in env["PATH"].split(os.pathsep) if d and not (Path(d) / "latent").exists())
    user, extensions, work = tmp / "user-data", tmp / "extensions", tmp / "work"
    for folder in (user / "User", extensions, work / ".git"):
        folder.mkdir(parents=True)
    files = {"demo.py": before, "cycle.py": places["cycle"][0], "twice.py": places["twice"][0],
             "manual.py": before, "previous.py": places["previous"][0], "word.py": places["word"][0],
             places["lineFile"]: places["line"][0]}
    for name, text in files.items():
        (work / name).write_text(text)
    # code-server is a remote window: the user-only ("machine") settings are the remote's, in
    # Machine/settings.json (its Remote settings); VS Code ignores them in User/settings.json there
    machine = {"latent.model": model.path} if model.path else {}   # latent.server.path: the default, `latent`
    settings = dict(SETTINGS, **{"latent.threads": harness.THREADS, "latent.logLevel": "debug"})
    settings_file, machine_file = user / "User" / "settings.json", user / "Machine" / "settings.json"
    machine_file.parent.mkdir()
    settings_file.write_text(json.dumps(settings, indent=2))
    machine_file.write_text(json.dumps(machine, indent=2))
    config = tmp / "code-server.yaml"
    config.write_text("auth: none\ncert: false\n")
    common = [str(CODE_SERVER), "--config", str(config), "--user-data-dir", str(user),
              "--extensions-dir", str(extensions)]
    installed = subprocess.run(common + ["--install-extension", str(VSIX)], env=env, capture_output=True,
                               text=True, timeout=120)
    assert installed.returncode == 0, installed.stdout + installed.stderr

    def answered(name: str) -> str:  # a log pattern: the server answered an inline request in `name`
        return rf"\] lsp_server\.requests: inline {re.escape(name)}:\d+:\d+: \S+/\S+ in "

    plan = {"shots": str(ARTIFACTS), "settings": str(settings_file), "machineSettings": str(machine_file),
            "logs": str(user / "logs"), "scenarios": [
        {"name": "ready"},
        {"name": "accept", "file": "demo.py", "typed": typed},
        {"name": "cycle", "file": "cycle.py", "typed": places["cycle"][1], "asked": answered("cycle.py")},
        {"name": "twice", "file": "twice.py", "typed": places["twice"][1]},
        {"name": "previous", "file": "previous.py", "typed": places["previous"][1], "asked": answered("previous.py")},
        {"name": "word", "file": "word.py", "typed": places["word"][1]},
        {"name": "line", "file": places["lineFile"], "typed": places["line"][1]},
        {"name": "manual", "file": "manual.py", "typed": typed,
         "requests": r"\] lsp_server\.requests: inline manual\.py:\d+:\d+: "},
        {"name": "stats"},
        {"name": "snooze"},
        {"name": "missing", "path": "~/missing/latent"},
    ]}
    port = free_port()
    plan["url"] = f"http://127.0.0.1:{port}/?folder={work}"
    (tmp / "plan.json").write_text(json.dumps(plan))
    log = open(tmp / "code-server.log", "w")
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
        ui = subprocess.run(["node", str(EDITORS / "vscode" / "test" / "ui.mjs"), str(tmp / "plan.json")],
                            env={**env, "PLAYWRIGHT_CORE": str(PLAYWRIGHT), "CHROMIUM": str(CHROMIUM)},
                            capture_output=True, text=True, timeout=300)
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
        if ARTIFACTS.is_dir():
            shutil.copy(tmp / "code-server.log", ARTIFACTS / "vscode-code-server.log")
    lines = [line for line in ui.stdout.splitlines() if line.startswith("{")]
    assert ui.returncode == 0 and lines, f"ui.mjs failed:\n{ui.stderr[-3000:]}"
    channel = "\n".join(p.read_text() for p in sorted((user / "logs").glob("*/exthost*/latent.latent/Latent.log")))
    if ARTIFACTS.is_dir():
        (ARTIFACTS / "vscode-latent-output.log").write_text(channel)
        (ARTIFACTS / "vscode-ui.json").write_text(lines[-1])
    return {"result": json.loads(lines[-1]), "log": channel, "work": work, "home": home, "model": model,
            "before": before, "typed": typed, "suggestion": suggestion, "places": places}


def scenario(vscode: dict, name: str) -> dict:
    out = vscode["result"].get(name)
    assert out is not None, f"the {name} scenario did not run: {vscode['result']}"
    assert "error" not in out, (f"{name}: {out['error']} (screenshots in {ARTIFACTS}, the Latent output channel "
                                f"in {ARTIFACTS / 'vscode-latent-output.log'})")
    return out


def answers(vscode: dict, name: str) -> list[str]:
    """The server's log lines for the inline requests it answered in file `name`, in order:
    "inline demo.py:3:6: model/line in 162.6 ms (…, engine 108.2, …) … generated 17 -> 1 suggestion(s)"."""
    return re.findall(rf"\] lsp_server\.requests: (inline {re.escape(name)}:\S+ \S+/\w+ in .*)", vscode["log"])


def saved_line(vscode: dict, name: str, line: int) -> str:
    return (vscode["work"] / name).read_text().split("\n")[line]


@pytest.mark.slow
def test_vscode_shows_ghost_text_and_tab_accepts_it(vscode):
    scenario(vscode, "ready")
    out = scenario(vscode, "accept")
    before, typed, suggestion, model = vscode["before"], vscode["typed"], vscode["suggestion"], vscode["model"]
    typed_line = before.split("\n")[-1] + typed
    first_line = suggestion.split("\n")[0]
    assert vscode["result"]["ready"]["statusBar"].startswith("Latent"), vscode["result"]["ready"]
    # the server's answers at the end of the typed line (the log counts from 1): the model's, or
    # the cache's for the same prompt, is what the pipeline gives in-process too; where an answer
    # to an earlier keystroke foresaw the rest of what was typed, the ghost text is what is left
    # of that one (typing-through), which depends on how the keys fell between requests
    log = answers(vscode, "demo.py")
    at = [line for line in log if line.startswith(f"inline demo.py:{before.count(chr(10)) + 1}:{len(typed_line) + 1}: ")]
    assert at, f"no answer at the end of the typed line: {log}"
    shown = out["ghost"]
    assert shown, out
    if not all(" typing-through/" in line for line in at):
        assert shown == first_line, f"ghost text {shown!r}, the pipeline suggests {first_line!r}"
    if model.answer:
        assert shown == model.answer
    assert out["lineAfterTab"] == typed_line + shown, out
    saved = saved_line(vscode, "demo.py", before.count("\n"))
    assert saved == typed_line + shown, f"the saved line is {saved!r}"


@pytest.mark.slow
def test_vscode_status_bar_shows_the_models_latency_not_a_typed_through_answers(vscode):
    """After the model's answer the item reads "Latent 55 ms · 17 tok" (engine time, tokens
    generated); typing the ghost text's first character is answered by typing-through in ~1 ms,
    which must leave that figure alone."""
    out = scenario(vscode, "accept")
    log = answers(vscode, "demo.py")
    # the answer to the ghost's first character: the typed-through one after those the scenario
    # counted before typing it (typing the line itself may be answered by typing-through too)
    throughs = [i for i, line in enumerate(log) if " typing-through/" in line]
    assert len(throughs) > out["typedThroughBefore"], log
    through = throughs[out["typedThroughBefore"]]
    model = [line for line in log[:through] if " model/" in line]
    assert model, f"no model answer for demo.py before the typed-through one: {log}"
    engine_ms = float(re.search(r"engine ([\d.]+)", model[-1]).group(1))
    generated = int(re.search(r"generated (\d+)", model[-1]).group(1))
    shown = re.fullmatch(r"Latent (\d+) ms · (\d+) tok", out["statusAfterModel"])
    assert shown, f"status bar {out['statusAfterModel']!r}"
    assert int(shown.group(2)) == generated and abs(int(shown.group(1)) - engine_ms) <= 1, (out, model[-1])
    assert out["statusAfterTypingThrough"] == out["statusAfterModel"], out
    tip = out["tooltipAfterTypingThrough"]
    for said in ("Latent: ready", f"{generated} generated", "Last answer: typing-through, line"):
        assert said in tip, tip


@pytest.mark.slow
def test_vscode_cycles_to_the_second_suggestion_and_tab_accepts_it(vscode):
    """Alt+\\ asks (Invoked: several suggestions), Alt+] shows the next one, Tab accepts it."""
    out = scenario(vscode, "cycle")
    before, typed = vscode["places"]["cycle"]
    offered = [int(n) for n in re.findall(r"-> (\d+) suggestion", "\n".join(answers(vscode, "cycle.py")))]
    assert max(offered, default=0) >= 2, f"the server offered {offered} suggestions in cycle.py"
    assert out["first"] and out["second"] and out["second"] != out["first"], out
    saved = (vscode["work"] / "cycle.py").read_text()
    assert saved == before + typed + out["second"], f"cycle.py holds {saved!r}, not the second suggestion"


@pytest.mark.slow
def test_vscode_previous_returns_to_the_first_suggestion(vscode):
    """Alt+\\ asks, Alt+] shows the next suggestion, Alt+[ the first again; Tab accepts it."""
    out = scenario(vscode, "previous")
    before, typed = vscode["places"]["previous"]
    assert out["first"] and out["second"] and out["second"] != out["first"], out
    assert out["back"] == out["first"], f"after Alt+] and Alt+[ the ghost text is {out['back']!r}: {out}"
    saved = (vscode["work"] / "previous.py").read_text()
    assert saved == before + typed + out["first"], f"previous.py holds {saved!r}, not the first suggestion"


@pytest.mark.slow
def test_vscode_ctrl_right_accepts_the_next_word_and_leaves_the_rest(vscode):
    out = scenario(vscode, "word")
    before, typed = vscode["places"]["word"]
    typed_line = before.split("\n")[-1] + typed
    ghost = out["ghost"]
    word = next_word(ghost)
    assert 0 < len(word) < len(ghost), f"the ghost text {ghost!r} is one word: Ctrl+Right would accept it all"
    assert out["line"] == typed_line + word, f"after Ctrl+Right the line is {out['line']!r}, not {typed_line + word!r}"
    saved = saved_line(vscode, "word.py", before.count("\n"))
    assert saved == typed_line + word, f"the saved line is {saved!r}, not {typed_line + word!r}"
    assert out["rest"] == ghost[len(word):], f"after accepting {word!r} of {ghost!r} the ghost text is {out['rest']!r}"


@pytest.mark.slow
def test_vscode_shift_tab_accepts_the_next_line(vscode):
    """Enter after a block header; Shift+Tab accepts the ghost text's first line (and its line
    break) and leaves the other lines offered; a one-line suggestion it accepts whole."""
    out = scenario(vscode, "line")
    before, typed = vscode["places"]["line"]
    shown, line = out["lines"], before.count("\n") + typed.count("\n")
    assert shown[0].strip(), f"no ghost text on the cursor's line: {out}"
    assert out["lineBefore"].strip() == (before + typed).split("\n")[-1].strip(), out
    saved = (vscode["work"] / vscode["places"]["lineFile"]).read_text().split("\n")
    if vscode["places"]["multiline"]:
        assert len(shown) > 1, f"the pipeline suggests several lines here, VS Code showed {shown}"
    if len(shown) > 1:
        assert saved[line:] == [out["lineBefore"] + shown[0], ""], (
            f"the file ends with {saved[line:]}, not the line {shown[0]!r} and a line break")
        assert out["linesAfter"] == shown[1:], f"after Shift+Tab the ghost text is {out['linesAfter']}, not {shown[1:]}"
    else:
        assert saved[line] == out["lineBefore"] + shown[0], f"the saved line is {saved[line]!r}, shown was {shown}"
        assert out["lineAfter"] == saved[line], out


@pytest.mark.slow
def test_vscode_accepting_twice_never_offers_the_accepted_text_again(vscode):
    out = scenario(vscode, "twice")
    before, typed = vscode["places"]["twice"]
    typed_line = before.split("\n")[-1] + typed
    assert out["first"], out
    assert out["next"] != out["first"], f"after accepting {out['first']!r} the same suggestion came again"
    # the file from the typed line on; the ghost text reads as its lines' text joined (the second
    # suggestion may begin a line of its own)
    saved = (vscode["work"] / "twice.py").read_text().split("\n")[before.count("\n"):]
    assert "".join(saved) == typed_line + out["first"] + out["next"], f"twice.py ends with {saved!r}: {out}"
    if not out["next"]:   # the tooltip says why nothing came
        assert re.search(r"Last answer: [^\n]*nothing to suggest\nWhy: \S", out["tooltip"]), out["tooltip"]
    end = f"{before.count(chr(10)) + 1}:{len(typed_line + out['first']) + 1}"
    assert any(line.startswith(f"inline twice.py:{end}: ") for line in answers(vscode, "twice.py")), (
        f"the server answered no request at the end of the accepted text ({end})")


@pytest.mark.slow
def test_vscode_manual_trigger_sends_no_request_while_typing_and_one_on_the_key(vscode):
    out = scenario(vscode, "manual")
    assert "manual" in out["status"], out
    assert out["requestsWhileTyping"] == 0 and out["ghostWhileTyping"] == "", out
    assert out["requestsAfterTrigger"] >= 1 and out["ghostAfterTrigger"], out


@pytest.mark.slow
def test_vscode_statistics_read_as_a_page_with_each_reasons_share(vscode):
    text = scenario(vscode, "stats")["text"]
    for heading in ("Status", "Requests", "Why there was nothing to suggest", "Caches", "Engine"):
        assert heading in text, f"no {heading!r} in the statistics:\n{text}"
    assert re.search(r"Hit rate.*\d+ %", text), text
    assert '"service"' not in text and "{" not in text, "the statistics are raw JSON"


@pytest.mark.slow
def test_vscode_snooze_shows_until_when_in_the_status_bar(vscode):
    out = scenario(vscode, "snooze")
    assert re.fullmatch(r"Latent until \d\d?:\d\d( [AP]M)?", out["status"]), out
    until = out["status"].removeprefix("Latent until ")
    assert f"Snoozed until {until}" in out["tooltip"], out["tooltip"]
    assert re.search(r"Completion is snoozed for 15 minutes", vscode["log"])


@pytest.mark.slow
def test_vscode_finds_latent_where_install_user_puts_it_and_a_missing_server_is_one_notification(vscode):
    home = vscode["home"]
    assert re.search(rf"\[info\] Starting {re.escape(str(home))}/\.local/bin/latent lsp", vscode["log"]), \
        "`latent` in ~/.local/bin, not on PATH, was not found"
    out = scenario(vscode, "missing")
    assert len(out["toasts"]) == 1, f"notifications: {out['toasts']}"
    toast = out["toasts"][0]
    assert "not found" in toast["text"] and str(home / "missing" / "latent") in toast["text"], toast
    assert "`" not in toast["text"] and "Open Setting" in toast["buttons"], toast
    assert any(title.endswith("Path") for title in out["settingsShown"]), out["settingsShown"]


@pytest.mark.slow
def test_vscode_shows_each_server_log_line_once_at_its_level(vscode):
    log = vscode["log"]
    records = re.findall(r"^\S+ \S+ \[(\w+)\] (lsp_server\.\w+: .*)$", log, re.M)
    assert records, log[-2000:]
    loaded = [level for level, message in records if "Loaded the model" in message]
    assert loaded == ["info"], f"'Loaded the model' appears as {loaded}"
    answered = [message for _, message in records if re.search(r"inline \S+: \S+/\S+ in [\d.]+ ms", message)]
    assert answered and len(answered) == len(set(answered)), "a completion's log line appears twice"
    assert not re.search(r"\[error\] \d\d:\d\d:\d\d (INFO|DEBUG)", log), "stderr lines are shown as errors"
