"""Settings from the wire: those that choose where code goes are the user's alone (issue #12
item 2), a config file cannot stop the server starting (9), a removed setting returns to its
default (10), limits that span settings (11), and a workspace cannot size the engine (issue #20
item 5). Raw bytes through tests/wire_helpers.py's Wire.
"""
from __future__ import annotations

import http.server
import os
import socket
import threading
from pathlib import Path

import pytest

from lsp_helpers import server_env
from lsp_server.engines import plain_http_elsewhere
from wire_helpers import INLINE, MISSING_MODEL, bundled_env, inline_params, is_sentence


class FakeOpenAI(http.server.ThreadingHTTPServer):
    """An OpenAI-compatible server that records what reaches it (path, Authorization, body)."""

    daemon_threads = True

    def __init__(self, host: str) -> None:
        self.requests: list[tuple[str, str | None, str]] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(handler):
                self.requests.append((handler.path, handler.headers.get("Authorization"), ""))
                handler._reply(b'{"object": "list", "data": [{"id": "fake-model"}]}', "application/json")

            def do_POST(handler):
                body = handler.rfile.read(int(handler.headers.get("Content-Length") or 0)).decode()
                self.requests.append((handler.path, handler.headers.get("Authorization"), body))
                handler._reply(b"data: [DONE]\n\n", "text/event-stream")

            def _reply(handler, data: bytes, kind: str):
                handler.send_response(200)
                handler.send_header("Content-Type", kind)
                handler.send_header("Content-Length", str(len(data)))
                handler.end_headers()
                handler.wfile.write(data)

        super().__init__((host, 0), Handler)
        self.port = self.server_address[1]
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.shutdown()
        self.server_close()


# ---------------------------------------------------------------------------------------------
# 2. Settings that choose where code goes are the user's alone

def test_a_settings_message_cannot_send_code_or_keys_anywhere(wire, tmp_path):
    """A cloned repository's workspace settings reach the server in didChangeConfiguration and in
    workspace/configuration answers: neither may choose the engine, the key or the model."""
    with FakeOpenAI("127.0.0.1") as remote:
        env = bundled_env(tmp_path)
        env["WIRE_SECRET"] = "hunter2"
        server = wire(env)
        server.initialize(capabilities={"workspace": {"configuration": True}})
        uri = "file:///wire/secret.py"
        server.open(uri, "PASSWORD = 'swordfish'\nprint(", "python")
        hostile = {"engine": f"openai:http://127.0.0.1:{remote.port}/v1", "apiKeyEnv": "WIRE_SECRET",
                   "tokenizer": str(tmp_path), "allowInsecureRemote": True, "model": "fake-model"}
        statuses = len(server.notifications("latent/status"))
        server.notify("workspace/didChangeConfiguration",
                      {"settings": {"latent": {**hostile, "maxNewTokensLine": 7}}})
        settings = server.stats()["settings"]
        assert settings["max_new_tokens_line"] == 7                  # the harmless setting applies …
        assert (settings["engine"], settings["api_key_env"], settings["model"]) == ("inprocess", None, None)
        server.configuration = [hostile]                             # … and a pull is no different
        server.notify("workspace/didChangeConfiguration", {"settings": None})
        assert len(server.logs("ignored", count=2)) == 2
        server.call(INLINE, inline_params(uri, 1, 6), timeout=60)
        assert server.stats()["settings"]["engine"] == "inprocess"
        assert [s["state"] for s in server.notifications("latent/status")[statuses:]].count("loading") == 0
    assert remote.requests == []                                     # nothing left the machine
    ignored = server.logs("ignored")
    assert len(ignored) == 2 and all("engine" in line and is_sentence(line.split(": ", 1)[1]) for line in ignored)


def _other_host() -> str:
    """A name for this machine that is not a loopback literal (it may resolve to one)."""
    name = socket.gethostname()
    try:
        socket.getaddrinfo(name, 80)
    except OSError:
        pytest.skip(f"this machine's name {name!r} does not resolve")
    return name


def test_plain_http_to_another_host_needs_the_users_opt_in(wire, tmp_path):
    host = _other_host()
    with FakeOpenAI("0.0.0.0") as remote:
        url = f"http://{host}:{remote.port}/v1"
        server = wire(bundled_env(tmp_path / "a"))
        server.initialize({"engine": f"openai:{url}"})
        assert server.ready() == "error"
        [refusal] = server.shown()
        assert refusal["type"] == 1 and "allow_insecure_remote" in refusal["message"]
        assert remote.requests == []
        # a workspace cannot opt in for the user
        server.notify("workspace/didChangeConfiguration", {"settings": {"latent": {"allowInsecureRemote": True}}})
        assert server.stats()["settings"]["allow_insecure_remote"] is False
        assert remote.requests == []

        config = tmp_path / "b" / "xdg-config" / "latent" / "config.toml"
        config.parent.mkdir(parents=True)
        config.write_text(f'engine = "openai:{url}"\nallow_insecure_remote = true\n')
        server = wire(bundled_env(tmp_path / "b"))
        server.initialize()
        assert server.ready() == "ready"
        uri = "file:///wire/remote.py"
        server.open(uri, "print(", "python")
        server.call(INLINE, inline_params(uri, 0, 6), timeout=60)
        server.notify("workspace/didChangeConfiguration", {"settings": {"latent": {"maxNewTokensLine": 9}}})
        server.stats()
        told = [m for m in server.shown() if m["type"] == 3]
        assert len(told) == 1 and url in told[0]["message"]             # said once, where code goes
        assert remote.requests and remote.requests[-1][0] == "/v1/completions"


def test_only_plain_http_to_another_machine_needs_the_opt_in():
    for url in ("http://127.0.0.1:8000/v1", "http://127.9.9.9/v1", "http://[::1]:8000/v1", "http://localhost/v1",
                "https://api.example.com/v1", "https://10.0.0.1/v1"):
        assert not plain_http_elsewhere(url), url
    for url in ("http://10.0.0.1/v1", "http://api.example.com/v1", "http://foo.localhost/v1",
                "http://localhost.example.com/v1", "http://[::2]/v1"):
        assert plain_http_elsewhere(url), url


# ---------------------------------------------------------------------------------------------
# 9. A config file cannot stop the server starting

@pytest.mark.parametrize("kind", ["invalid UTF-8", "a FIFO", "/dev/zero", "a directory", "two megabytes"])
def test_a_config_file_that_cannot_be_read_is_a_warning_and_the_defaults(wire, tmp_path, kind):
    path = tmp_path / "config.toml"
    if kind == "invalid UTF-8":
        path.write_bytes(b'model = "\xff\xfe"\n')
    elif kind == "a FIFO":
        os.mkfifo(path)
    elif kind == "/dev/zero":
        path = Path("/dev/zero")
    elif kind == "a directory":
        path.mkdir()
    else:
        path.write_text("# padding\n" * (2 << 17))
    env = server_env(tmp_path, model=MISSING_MODEL, config=str(path))
    server = wire(env)
    server.initialize(ready=False)                     # answered: the server started
    [warning] = server.logs(str(path), count=1)
    assert is_sentence(warning.split(": ", 1)[1])
    assert server.stats()["settings"]["max_prompt_tokens"] == 2048


# ---------------------------------------------------------------------------------------------
# 10. A removed setting returns to its default

def test_a_removed_setting_returns_to_its_default_and_reloads(wire, tmp_path):
    server = wire(bundled_env(tmp_path))
    server.initialize({"device": "cuda:7", "maxNewTokensLine": 5})
    assert server.ready() == "error"                  # no such device here
    before = len(server.notifications("latent/status"))
    server.notify("workspace/didChangeConfiguration", {"settings": {"latent": {}}})   # both settings removed
    assert server.ready(after=before) == "ready"
    settings = server.stats()["settings"]
    assert (settings["device"], settings["max_new_tokens_line"]) == ("cpu", 48)


# ---------------------------------------------------------------------------------------------
# 11. Limits that span settings

def test_a_prompt_budget_the_context_cannot_hold_is_refused(wire):
    """Both are the user's settings (issue #20 item 5), so the user's initializationOptions set them."""
    server = wire()
    server.initialize({"maxPromptTokens": 5000}, ready=False)
    settings = server.stats()["settings"]
    assert settings["max_prompt_tokens"] == 2048                # the previous value stays
    [warning] = server.logs("max_prompt_tokens", count=1)
    assert "max_context" in warning and is_sentence(warning.split(": ", 1)[1])
    server = wire()
    server.initialize({"maxPromptTokens": 5000, "maxContext": 8192}, ready=False)
    assert server.stats()["settings"]["max_prompt_tokens"] == 5000   # together they fit


# ---------------------------------------------------------------------------------------------
# Issue #20, 5. A workspace's settings cannot size the engine

ENGINE_SIZES = ("max_context", "max_prompt_tokens", "cache_mb", "threads")


def test_a_workspace_cannot_size_the_engine(wire):
    """A cloned repository's maxContext, maxPromptTokens, cacheMb and threads grew the server from
    297 to 1,609 MB and reloaded the model (a new compiled step) for each value; they come from
    the user's own layers only, like the model and the engine."""
    server = wire()
    server.initialize({"maxContext": 8192, "cacheMb": 256}, capabilities={"workspace": {"configuration": True}})
    mine = {name: server.stats()["settings"][name] for name in ENGINE_SIZES}
    assert mine == {"max_context": 8192, "max_prompt_tokens": 2048, "cache_mb": 256, "threads": 1}
    statuses = len(server.notifications("latent/status"))
    hostile = {"maxContext": 1 << 20, "maxPromptTokens": 100_000, "cacheMb": 1 << 20, "threads": 64}
    server.notify("workspace/didChangeConfiguration", {"settings": {"latent": {**hostile, "maxNewTokensLine": 7}}})
    settings = server.stats()["settings"]
    assert settings["max_new_tokens_line"] == 7                       # the harmless setting applies …
    assert {name: settings[name] for name in ENGINE_SIZES} == mine    # … the sizes stay the user's
    server.configuration = [{"maxContext": 65536, "threads": 2}]      # a pull is no different
    server.notify("workspace/didChangeConfiguration", {"settings": None})
    ignored = server.logs("ignored", count=2)
    assert {name: server.stats()["settings"][name] for name in ENGINE_SIZES} == mine
    assert len(ignored) == 2 and all("max_context" in line and "threads" in line for line in ignored)
    assert "cache_mb" in ignored[0] and "max_prompt_tokens" in ignored[0]
    assert all(is_sentence(line.split(": ", 1)[1]) for line in ignored)
    assert [s["state"] for s in server.notifications("latent/status")[statuses:]].count("loading") == 0
