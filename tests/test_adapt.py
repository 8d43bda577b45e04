"""`latent adapt` (#23): which files it reads, what it never learns, the run that fits the bundled
model to a workspace, stops and goes on, and which documents then get the adapted model."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from lsp_server.adapt import workspace_files
from model.adapted import adapted_for, workspace
from model.loader import BUNDLED_DIR
from model.train.secrets import clean, secret_file, secret_line

ROOT = Path(__file__).resolve().parent.parent

# -- secrets ------------------------------------------------------------------------------------

SECRET_LINES = [
    'AWS_ACCESS_KEY_ID = "AKIAIOSFODNN7EXAMPLE"',
    'client = Github("ghp_16C7e42F292c6912E7710c838347Ae178B4a")',
    'SLACK = "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx"',
    'stripe.api_key = "sk_live_4eC39HqLyjWDarjtT1zdp7dc"',
    'openai_key = "sk-proj-Tq3vB8xZ2mN5pL7kR9sW1yU4"',
    'GOOGLE = "AIzaSyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q"',
    'headers = {"Authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N"}',
    'DATABASE_URL = "postgres://admin:pa55w0rd@db.internal:5432/app"',
    'password = "hunter22"',
    '    "db_password": "Tr0ub4dor&3",',
    'conn = connect(user="app", passwd="letmein99")',
    'SECRET_KEY = "django-insecure-7f3k!x@q9z"',
    'salt = "8f14e45fceea167a5a36dedd4bea2543"',
    'blob = "Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MGFiY2RlZg=="',
]
ORDINARY_LINES = [
    'tokenizer = Tokenizer.from_file("tokenizer.json")',
    "token = self.next_token()",
    'API_KEY_ENV = "OPENAI_API_KEY"',
    'password = os.environ["DB_PASSWORD"]',
    'password = ""',
    'api_key = "<your api key>"',
    'raise ValueError("Invalid token: expected a name")',
    'TOKEN_TYPE = "bearer"',
    'auth_url = "https://example.com/oauth/authorize"',
    'name = "some_module.submodule.function_name"',
    'assert parse("a + b") == ["a", "+", "b"]',
    "for key, value in data.items():",
]


@pytest.mark.parametrize("line", SECRET_LINES)
def test_lines_that_look_like_credentials_are_left_out(line):
    assert secret_line(line)
    assert line not in clean("app/settings.py", f"x = 1\n{line}\ny = 2\n").text


@pytest.mark.parametrize("line", ORDINARY_LINES)
def test_ordinary_code_about_tokens_and_passwords_is_kept(line):
    assert not secret_line(line)
    assert clean("app/code.py", f"{line}\n").text == f"{line}\n"


def test_a_private_key_block_is_left_out_whole_and_counted():
    text = ('KEY = """\n-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7\nq0FtK3Zl\n'
            '-----END RSA PRIVATE KEY-----\n"""\nprint(KEY)\n')
    cleaned = clean("keys.py", text)
    assert cleaned.text == 'KEY = """\n"""\nprint(KEY)\n' and cleaned.lines_left_out == 4


@pytest.mark.parametrize("path", [".env", "config/.env.production", "deploy/id_rsa", "certs/server.pem",
                                  "tls.key", "app/secrets.py", "credentials.py", "home/.netrc"])
def test_files_that_hold_credentials_are_left_out_whole(path):
    assert secret_file(path)
    cleaned = clean(path, "A = 1\nB = 2\n")
    assert cleaned.text == "" and cleaned.file_left_out and cleaned.lines_left_out == 2


@pytest.mark.parametrize("path", ["app/environment.py", "src/tokens.py", "keyboard.py", "auth/views.py"])
def test_ordinary_file_names_are_read(path):
    assert not secret_file(path)


# -- the workspace's files ------------------------------------------------------------------------

def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True,
                   env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@t"})


def test_a_git_workspace_gives_tracked_and_unignored_files_of_the_models_languages(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "core.py").write_text("def f():\n    return 1\n")
    (tmp_path / "pkg" / "notes.md").write_text("# notes\n")
    (tmp_path / "generated.py").write_text("X = 1\n")
    (tmp_path / "new.py").write_text("Y = 2\n")
    (tmp_path / ".gitignore").write_text("generated.py\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", "pkg/core.py", ".gitignore")
    _git(tmp_path, "commit", "-q", "-m", "one")
    got = dict(workspace_files(tmp_path, {".py"}))
    assert set(got) == {"pkg/core.py", "new.py"} and got["new.py"] == "Y = 2\n"


def test_outside_git_hidden_environment_and_build_folders_are_skipped(tmp_path):
    for rel in ("app/main.py", ".venv/lib/site.py", "node_modules/x/y.py", "build/lib/app.py", "app/data.bin"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("Z = 3\n")
    (tmp_path / "app" / "latin1.py").write_bytes(b"s = '\xe9'\n")          # not UTF-8: skipped
    assert [rel for rel, _ in workspace_files(tmp_path, {".py"})] == ["app/main.py"]


# -- the run ------------------------------------------------------------------------------------

def _project(root: Path) -> None:
    """A small project with a house style the bundled model never saw, and one secret."""
    for i in range(12):
        body = "".join(
            f"def zorp_frobnicate_{i}_{j}(quux_widget, blarg_level={j}):\n"
            f"    \"\"\"Frobnicate the quux widget at blarg level {j}.\"\"\"\n"
            f"    quux_widget.zorp_counter += blarg_level * {i + 1}\n"
            f"    return quux_widget.zorp_frobnicated(blarg_level)\n\n\n" for j in range(8))
        (root / f"zorp_{i}.py").write_text(f"import zorp\n\n\n{body}")
    (root / "settings.py").write_text('API_TOKEN = "ghp_16C7e42F292c6912E7710c838347Ae178B4a"\nDEBUG = True\n')


@pytest.fixture
def adapt_dir(tmp_path, monkeypatch):
    folder = tmp_path / "adapt-home"
    monkeypatch.setenv("LATENT_ADAPT_DIR", str(folder))
    return folder


@pytest.fixture(scope="module")
def adapted(tmp_path_factory):
    """A project adapted to (with a stop in the middle): (project, workspace, the first call's
    answer, the summary)."""
    from model.train.adapt import adapt

    tmp = tmp_path_factory.mktemp("adapt")
    saved = os.environ.get("LATENT_ADAPT_DIR")
    os.environ["LATENT_ADAPT_DIR"] = str(tmp / "adapt-home")
    project = tmp / "project"
    (project / "sub").mkdir(parents=True)
    _project(project)
    files = workspace_files(project, {".py"})
    ws = workspace(project)
    # a stop (Ctrl-C) checkpoints; the same call goes on from there with what is left
    timer = threading.Timer(4.0, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        first = adapt(ws, files, BUNDLED_DIR, minutes=0.5, log=lambda *_: None, threads=2)
    finally:
        timer.cancel()
    stopped = {"answer": first, "checkpoint": (ws.home / "run" / "checkpoint.pt").is_file(),
               "served": adapted_for(project, BUNDLED_DIR)}
    summary = adapt(ws, files, BUNDLED_DIR, minutes=0.5, log=lambda *_: None, threads=2)
    yield project, ws, stopped, summary
    if saved is None:
        os.environ.pop("LATENT_ADAPT_DIR", None)
    else:
        os.environ["LATENT_ADAPT_DIR"] = saved


def test_adapting_learns_the_workspace_stops_goes_on_and_is_used_for_its_files(adapted, tmp_path):
    project, ws, stopped, summary = adapted
    assert "stopped" in stopped["answer"] and stopped["checkpoint"]
    assert stopped["served"] is None                                 # nothing half-done is served
    assert summary["bpb_after"] < 0.9 * summary["bpb_before"]      # it learnt the house style
    assert summary["lines_left_out"] == 1                          # the token in settings.py
    assert summary["heldout_files"] >= 1 and summary["files"] >= 10
    assert not (ws.home / "run").exists() and not (ws.home / "files").exists()
    assert os.stat(ws.home).st_mode & 0o077 == 0                   # the user's only
    note = json.loads((ws.home / "workspace.json").read_text())
    assert note["workspace"] == str(project.resolve())

    # documents of the workspace (and below it) get the adapted model, others do not
    assert adapted_for(project / "sub" / "new.py", BUNDLED_DIR) == ws
    assert adapted_for(tmp_path / "elsewhere.py", BUNDLED_DIR) is None
    other_base = tmp_path / "other-base"
    other_base.mkdir()
    (other_base / "config.json").write_text("{}")
    assert adapted_for(project, other_base) is None                # adapted from another model

    # the server's choice: the adapted model, unless the user set a model or turned it off
    from lsp_server.engines import adapted_model
    from lsp_server.settings import merge

    assert adapted_model(merge({})[0], project / "zorp_1.py") == ws
    assert adapted_model(merge({"adapted": False})[0], project / "zorp_1.py") is None
    assert adapted_model(merge({"model": str(BUNDLED_DIR)})[0], project / "zorp_1.py") is None

    from model.engine import Engine
    from model.params import RuntimeConfig

    engine = Engine.load(ws.model_dir, RuntimeConfig(compile=False, threads=1))
    assert engine.fim_format is not None


@pytest.mark.asyncio
async def test_the_language_server_serves_the_workspaces_adapted_model_and_says_so(adapted, tmp_path):
    from lsp_helpers import Session, server_env

    project, ws, _, _ = adapted
    env = server_env(tmp_path, adapt_dir=str(ws.home.parent))
    env.pop("LATENT_MODEL", None)                                  # the bundled model, as a user has it
    session = await Session.start(env, root=project)
    try:
        status = await session.ready()
        assert status.state == "ready" and status.model == f"bundled, adapted to {project.name}"
    finally:
        await session.stop()
    env["LATENT_ADAPTED"] = "false"
    session = await Session.start(env, root=project)
    try:
        status = await session.ready()
        assert status.state == "ready" and "adapted" not in status.model
    finally:
        await session.stop()


def test_on_the_shared_daemon_an_adapted_workspace_gets_a_daemon_of_its_own(adapted, tmp_path, monkeypatch):
    """engine = "daemon": the adapted model is served by a daemon of its own (its socket, its
    latent cache and cache file), so the bundled model's daemon and its warm rows stay as they
    are, and a second window on the workspace shares the adapted one."""
    from lsp_server.engines import adapted_model, make_engine
    from lsp_server.settings import merge
    from model.params import SamplingParams

    project, ws, _, _ = adapted
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    settings = merge({"engine": "daemon", "compile": False, "threads": 1})[0]
    client = make_engine(settings, adapted_model(settings, project))
    try:
        assert client.socket_path == runtime / "latent" / f"engine-{ws.home.name}.sock"
        assert Path(client.info["model_dir"]).resolve() == ws.model_dir.resolve()
        assert client.generate("def zorp_frob", SamplingParams(max_new_tokens=4)).run()
        again = make_engine(settings, adapted_model(settings, project / "sub"))      # a second window
        assert again.socket_path == client.socket_path
        again.close()
    finally:
        client.close()
        subprocess.run([sys.executable, "-m", "model.serve", "stop", "--socket", str(client.socket_path)],
                       capture_output=True, timeout=60, cwd=ROOT)


@pytest.mark.asyncio
async def test_forgetting_removes_everything_kept_and_a_running_server_goes_back_to_the_base(adapted, tmp_path):
    from lsp_helpers import Session, server_env

    project, ws, _, _ = adapted
    env = server_env(tmp_path, adapt_dir=str(ws.home.parent))
    env.pop("LATENT_MODEL", None)
    session = await Session.start(env, root=project)
    try:
        assert (await session.ready()).model == f"bundled, adapted to {project.name}"
        done = subprocess.run([sys.executable, "-m", "lsp_server", "adapt", str(project), "--forget"],
                              capture_output=True, text=True, cwd=ROOT, timeout=120, env={**os.environ})
        assert done.returncode == 0 and done.stdout.startswith("Forgot the adapted model of")
        assert not ws.home.exists() and adapted_for(project, BUNDLED_DIR) is None
        seen = len(session.statuses)
        session.open((project / "zorp_1.py").as_uri(), (project / "zorp_1.py").read_text())  # the next file opened
        status = await session.ready(after=seen)
        assert status.state == "ready" and status.model == "bundled"
    finally:
        await session.stop()


def test_latent_adapt_command_forgets_and_refuses_what_it_cannot_adapt(tmp_path, adapt_dir):
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("LATENT_")}, "LATENT_ADAPT_DIR": str(adapt_dir),
           "XDG_CONFIG_HOME": str(tmp_path / "config")}
    run = lambda *args: subprocess.run([sys.executable, "-m", "lsp_server", "adapt", *args],   # noqa: E731
                                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    empty = tmp_path / "empty"
    empty.mkdir()
    done = run(str(empty), "--minutes", "0.1")
    assert done.returncode == 2 and done.stderr.strip().endswith("adapting needs at least two")
    done = run(str(tmp_path / "missing"))
    assert done.returncode == 2 and "is not a folder" in done.stderr
    done = run(str(empty), "--forget")
    assert done.returncode == 0 and done.stdout.startswith("Nothing was kept for")
    done = run(str(empty), "--minutes", "0")
    assert done.returncode == 2 and "--minutes" in done.stderr


def _tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(str(f)).items()}


def _quick_adapt(tmp_path: Path, train: str):
    """A few seconds' adaptation of `train` weights to a fresh copy of the test project."""
    from model.train.adapt import adapt

    project = tmp_path / "project"
    project.mkdir()
    _project(project)
    ws = workspace(project)
    return ws, adapt(ws, workspace_files(project, {".py"}), BUNDLED_DIR, minutes=0.05, log=lambda *_: None,
                     threads=2, train=train)


def test_a_subset_of_the_weights_can_be_adapted_and_the_rest_stays_the_base_models(tmp_path, adapt_dir):
    ws, summary = _quick_adapt(tmp_path, "attention")
    base, adapted = _tensors(BUNDLED_DIR), _tensors(ws.model_dir)
    total = sum(v.numel() for v in base.values())
    assert summary["train"] == "attention" and summary["trained_parameters"] < 0.1 * total
    assert adapted.keys() == base.keys()
    changed = {k for k in base if not (adapted[k].float() == base[k].to(adapted[k].dtype).float()).all()}
    assert changed and all(".self_attn." in k for k in changed)


def test_lora_keeps_only_its_adapters_which_the_loader_adds_to_the_base(tmp_path, adapt_dir):
    import torch

    from model.engine import Engine
    from model.params import RuntimeConfig
    ws, summary = _quick_adapt(tmp_path, "lora")
    base = _tensors(BUNDLED_DIR)
    adapters = _tensors(ws.model_dir)
    targets = {k.rsplit(".lora_", 1)[0] for k in adapters}
    assert targets <= base.keys() and any(".mlp.experts." in k for k in targets)
    assert all(".self_attn." in k or ".mlp." in k for k in targets)
    assert not any(k.endswith("mlp.gate.weight") for k in targets)                 # the router stays
    assert summary["bytes"] < 0.2 * sum(f.stat().st_size for f in BUNDLED_DIR.glob("*.safetensors"))
    runtime = RuntimeConfig(compile=False, threads=1)
    plain, tuned = Engine.load(None, runtime), Engine.load(ws.model_dir, runtime)
    ids = plain.tokenizer.encode("def zorp_frobnicate_3_1(quux_widget, blarg_level=1):\n")
    assert not torch.allclose(plain.logits(ids), tuned.logits(ids))
    assert tuned.fim_layouts == plain.fim_layouts


def test_lora_adapters_under_the_checkpoints_names_are_the_trained_deltas():
    """What the loader adds (W + B A, per on-disk weight, each expert's gate and up apart) is
    what the trained, parametrized model computes."""
    import torch
    from torch.nn.utils import parametrize

    from model.train.adapt import add_lora, lora_tensors
    from model.train.export import export_state_dict
    from model.train.presets import PRESETS, build_model, hf_config

    config = hf_config(PRESETS["tiny"], 600)
    model = build_model(config, "grouped_mm")
    base = export_state_dict(model.state_dict(), config, torch.float32)
    add_lora(model)
    torch.manual_seed(0)
    for p in model.parameters():
        if p.requires_grad:
            p.data.normal_(0, 0.1)                       # as if trained: B is no longer zero
    merged = {}
    for module_name, module in model.named_modules():
        for name in list(getattr(module, "parametrizations", {}) or {}):
            merged[f"{module_name}.{name}"] = getattr(module, name).detach()
    assert parametrize.is_parametrized(model.model.layers[1].mlp.experts)
    want = export_state_dict(merged, config, torch.float32)
    adapters = lora_tensors(model)
    assert {k.rsplit(".lora_", 1)[0] for k in adapters} == set(want)
    for key, value in want.items():
        got = base[key] + adapters[f"{key}.lora_B"] @ adapters[f"{key}.lora_A"]
        torch.testing.assert_close(got, value, rtol=1e-5, atol=1e-5)
