"""Language servers attached to the shared engine daemon (engine = "daemon").

The server starts the daemon itself (detached, socket in $XDG_RUNTIME_DIR/latent/), answers
exactly as the in-process pipeline would, and a second server — a second editor window —
shares the daemon's model and its warm latent cache.
"""
from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest
import pytest_asyncio

from lsp_helpers import ROOT, Session, expected, pairs, server_env
from model.serve.client import EngineClient

pytestmark = pytest.mark.asyncio(loop_scope="module")

CODE = "def area(width, height):\n    return width * height\n\n\nprint(area(3, "


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("daemon")
    runtime = tmp / "runtime"
    runtime.mkdir(mode=0o700)
    environment = server_env(tmp, engine="daemon")
    environment["XDG_RUNTIME_DIR"] = str(runtime)
    yield environment
    subprocess.run([sys.executable, "-m", "model.serve", "stop"], env=environment, capture_output=True, timeout=30)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def first(env):
    s = await Session.start(env)
    yield s
    assert s.answered_once(), s.responses
    await s.kill()


async def test_a_server_on_the_daemon_answers_the_pipeline_suggestion(first, env):
    status = await first.ready()
    assert status.state == "ready", status
    assert "daemon" in status.model
    socket = os.path.join(env["XDG_RUNTIME_DIR"], "latent", "engine.sock")
    assert stat.S_IMODE(os.stat(socket).st_mode) == 0o600
    uri = "file:///project/area.py"
    lines = CODE.split("\n")
    line, character = len(lines) - 1, len(lines[-1])
    want = expected([(uri, "python", CODE)], uri, line, character)
    first.open(uri, CODE)
    got = await first.inline(uri, line, character)
    assert pairs(got) == want
    first.close(uri)


async def test_a_second_window_shares_the_model_and_its_warm_cache(first, env):
    uri = "file:///project/shared.py"
    text = CODE + "4)\n" + "# " + "x" * 200 + "\nprint(area(5, "
    lines = text.split("\n")
    line, character = len(lines) - 1, len(lines[-1])
    first.open(uri, text)
    await first.inline(uri, line, character)
    second = await Session.start(env)
    try:
        status = await second.ready()
        assert status.state == "ready"
        second.open(uri, text)
        await second.inline(uri, line, character)
        last = second.statuses[-1].last
        assert last.reusedTokens > 0 and last.prefilledTokens <= 1   # the first window's latents
    finally:
        await second.kill()
        first.close(uri)


async def test_clear_cache_empties_the_daemons_cache(first, env):
    await first.ready()
    uri = "file:///project/clear.py"
    lines = CODE.split("\n")
    first.open(uri, CODE)
    await first.inline(uri, len(lines) - 1, len(lines[-1]))
    daemon = EngineClient(os.path.join(env["XDG_RUNTIME_DIR"], "latent", "engine.sock"))
    assert daemon.stats()["cache_tokens"] > 0
    assert await first.command("latent.clearCache") == {"cleared": True}
    assert daemon.stats()["cache_tokens"] == 0                   # every window's cache, the daemon's
    first.close(uri)


async def test_the_daemon_client_and_the_remote_backend_import_no_torch():
    """A language server attached to a daemon holds no copy of PyTorch (nor the daemon's code)."""
    check = ("import sys, lsp_server.engines, model.serve.client, model.serve.remote; "
             "print(sorted(m for m in ('torch', 'model.serve.daemon', 'model.engine') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.stdout.strip() == "[]", done.stderr
