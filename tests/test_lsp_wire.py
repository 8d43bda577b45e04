"""The language server through the real wire, the way a broken client or an attacker reaches it:
`python -m lsp_server lsp` fed raw bytes on stdin (no LSP library on this side), every frame it
writes parsed strictly from stdout.

Issue #12: settings that choose where code goes are user-level only (2); no framing error leaves
the server deaf (3); protocol conformance (4); one bad change marks the document stale instead
of dropping the good ones (5); large documents (6); a config file cannot stop the server
starting (9); a removed setting returns to its default (10); cross-field limits (11); and a
fuzz test of frames and params (benchmarks/fuzz_lsp.py is its longer run).
"""
from __future__ import annotations

import collections
import hashlib
import http.server
import itertools
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from hypothesis import given, settings, strategies as st

from lsp_helpers import ROOT, server_env
from lsp_server.engines import plain_http_elsewhere
from lsp_server.transport import MAX_HEADER, Body, Framer, Oversized, Problem, Unreadable

MISSING_MODEL = "/nonexistent/latent-model"   # a load that fails at once: no model work in these tests
INLINE = "textDocument/inlineCompletion"


# ---------------------------------------------------------------------------------------------
# A raw JSON-RPC client

def frame(body: bytes | dict, header: bytes | None = None) -> bytes:
    """One LSP frame; `header` replaces the correct `Content-Length: N\\r\\n\\r\\n`."""
    if isinstance(body, dict):
        body = json.dumps(body).encode()
    return (b"Content-Length: %d\r\n\r\n" % len(body) if header is None else header) + body


def message(method, params=None, msg_id=None, **extra) -> dict:
    out = {"jsonrpc": "2.0", "method": method, **extra}
    if msg_id is not None:
        out["id"] = msg_id
    if params is not None:
        out["params"] = params
    return out


def inline_params(uri: str, line, character) -> dict:
    return {"textDocument": {"uri": uri}, "position": {"line": line, "character": character},
            "context": {"triggerKind": 1}}


def digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class Wire:
    """A `latent lsp` process written to with raw bytes; what it sends, message by message.

    Requests from the server are answered as a plain client would: workspace/configuration with
    `configuration`, anything else with null."""

    _count = itertools.count(1)

    def __init__(self, tmp: Path, env: dict | None = None, **settings: str) -> None:
        settings.setdefault("model", MISSING_MODEL)
        self.env = env if env is not None else server_env(tmp, **settings)
        self.stderr_path = tmp / f"server-{next(Wire._count)}.stderr"
        with open(self.stderr_path, "wb") as err:
            self.process = subprocess.Popen([sys.executable, "-m", "lsp_server", "lsp"], stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, stderr=err, env=self.env, cwd=str(ROOT))
        self.messages: list[dict] = []
        self.malformed: list[str] = []          # frames of the server's own that break the protocol
        self.configuration = [None]             # the answer to workspace/configuration
        self.eof = False
        self._changed = threading.Condition()
        self._ids = itertools.count(1)
        threading.Thread(target=self._read, daemon=True).start()

    # -- reading -------------------------------------------------------------------------------
    def _read(self) -> None:
        out = self.process.stdout
        try:
            while True:
                headers = {}
                while (line := out.readline()) not in (b"\r\n", b""):
                    name, sep, value = line.decode("ascii").partition(":")
                    if not sep or not line.endswith(b"\r\n"):
                        self.malformed.append(f"header line {line!r}")
                    headers[name] = value.strip()
                if not line:
                    return
                body = out.read(int(headers["Content-Length"]))
                received = json.loads(body)
                if not isinstance(received, dict) or received.get("jsonrpc") != "2.0":
                    self.malformed.append(f"message {body[:200]!r}")
                if "method" in received and "id" in received:
                    result = self.configuration if received["method"] == "workspace/configuration" else None
                    self.write(frame({"jsonrpc": "2.0", "id": received["id"], "result": result}))
                with self._changed:
                    self.messages.append(received)
                    self._changed.notify_all()
        except Exception as e:   # noqa: BLE001 — a broken stream from the server is a finding
            self.malformed.append(f"{type(e).__name__}: {e}")
        finally:
            with self._changed:
                self.eof = True
                self._changed.notify_all()

    def wait(self, predicate, timeout: float = 15.0, start: int = 0) -> dict | None:
        """The first message from index `start` on that satisfies `predicate`, or None."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for received in self.messages[start:]:
                    if predicate(received):
                        return received
                left = deadline - time.monotonic()
                if left <= 0 or self.eof:
                    return None
                self._changed.wait(min(left, 0.5))

    def answers(self, msg_id) -> list[dict]:
        with self._changed:
            return [m for m in self.messages if "method" not in m and m.get("id") == msg_id]

    def answer(self, msg_id, timeout: float = 15.0) -> dict:
        found = self.wait(lambda m: "method" not in m and m.get("id") == msg_id, timeout)
        assert found is not None, f"request {msg_id!r} was not answered in {timeout} s; {self.tail()}"
        return found

    def notifications(self, method: str) -> list[dict]:
        with self._changed:
            return [m["params"] for m in self.messages if m.get("method") == method and "id" not in m]

    def logs(self, containing: str = "", count: int = 0, timeout: float = 15.0) -> list[str]:
        """The window/logMessage lines containing `containing`, once there are `count` of them."""
        def lines() -> list[str]:
            return [p["message"] for p in self.notifications("window/logMessage") if containing in p["message"]]
        deadline = time.monotonic() + timeout
        while len(lines()) < count and time.monotonic() < deadline and not self.eof:
            with self._changed:
                self._changed.wait(0.2)
        return lines()

    def shown(self) -> list[dict]:
        return self.notifications("window/showMessage")

    def tail(self) -> str:
        return f"stderr: {self.stderr()[-2000:]!r}"

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    # -- writing -------------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        try:
            self.process.stdin.write(data)
            self.process.stdin.flush()
        except (BrokenPipeError, ValueError):
            pass

    def send(self, body: dict | bytes, header: bytes | None = None) -> None:
        self.write(frame(body, header))

    def request(self, method, params=None, msg_id=None) -> object:
        msg_id = f"r{next(self._ids)}" if msg_id is None else msg_id
        self.send(message(method, params, msg_id))
        return msg_id

    def notify(self, method, params=None) -> None:
        self.send(message(method, params))

    def call(self, method, params=None, timeout: float = 15.0):
        """A request's result (an error fails the test)."""
        answer = self.answer(self.request(method, params), timeout)
        assert "error" not in answer, answer
        return answer.get("result")

    def initialize(self, options=None, capabilities=None, ready: bool = True) -> dict:
        result = self.call("initialize", {"processId": None, "rootUri": None, "capabilities": capabilities or {},
                                          "initializationOptions": options}, timeout=60)
        self.notify("initialized", {})
        if ready:
            self.ready()
        return result

    def ready(self, after: int = 0, timeout: float = 120) -> str:
        """The state of the first `latent/status` ready or error after the first `after` statuses."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for status in self.notifications("latent/status")[after:]:
                if status["state"] in ("ready", "error"):
                    return status["state"]
            with self._changed:
                self._changed.wait(0.2)
        raise AssertionError(f"no ready or error status; {self.tail()}")

    def stats(self) -> dict:
        return self.call("workspace/executeCommand", {"command": "latent.stats"}, timeout=60)

    def open(self, uri: str, text: str, language: str = "python", version: int = 1) -> None:
        self.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": language,
                                                              "version": version, "text": text}})

    def change(self, uri: str, version: int, *changes: dict) -> None:
        self.notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": version},
                                               "contentChanges": list(changes)})

    def responds(self, timeout: float = 15.0) -> bool:
        """A fresh request is answered (an unknown method: the answer is MethodNotFound)."""
        msg_id = self.request("wire/probe")
        return self.wait(lambda m: "method" not in m and m.get("id") == msg_id, timeout) is not None

    def document(self, uri: str) -> dict | None:
        """The server's record of an open document (latent.stats' "open")."""
        return next((d for d in self.stats()["open"] if d["uri"] == uri), None)

    # -- the end -------------------------------------------------------------------------------
    def close(self) -> int | None:
        if self.process.poll() is None:
            self.process.kill()
        try:
            return self.process.wait(10)
        finally:
            self.process.stdin.close()
            self.process.stdout.close()


def span(l1, c1, l2, c2, text: str) -> dict:
    return {"range": {"start": {"line": l1, "character": c1}, "end": {"line": l2, "character": c2}}, "text": text}


def is_sentence(text: str) -> bool:
    return bool(text) and "\n" not in text and "Traceback" not in text and text.rstrip().endswith((".", ")"))


@pytest.fixture
def wire(tmp_path):
    servers = []

    def start(env: dict | None = None, **settings) -> Wire:
        servers.append(Wire(tmp_path, env, **settings))
        return servers[-1]

    yield start
    for server in servers:
        assert not server.malformed, server.malformed   # the server's own output is always well-formed
        server.close()


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


def bundled_env(tmp: Path, **settings: str) -> dict:
    """The tests' environment with the model that loads (server_env's), not MISSING_MODEL."""
    return server_env(tmp, **settings)


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
# 3. Framing

def _echo(msg_id: str) -> bytes:
    return json.dumps(message("wire/echo", None, msg_id)).encode()


# name -> (the bytes sent for a request body, the error that request is answered with: -32601,
# unknown method, when it was read; None when it is lost)
FRAMINGS = {
    "Content-Length one byte short": (lambda b: b"Content-Length: %d\r\n\r\n" % (len(b) - 1) + b, -32601),
    "Content-Length one byte long": (lambda b: b"Content-Length: %d\r\n\r\n" % (len(b) + 1) + b, -32601),
    "a body after Content-Length: 0": (lambda b: b"Content-Length: 0\r\n\r\n" + b, -32601),
    "a negative length": (lambda b: b"Content-Length: -%d\r\n\r\n" % len(b) + b, -32601),
    "a length that is not a number": (lambda b: b"Content-Length: twelve\r\n\r\n" + b, -32601),
    "Content-Length: 1e15": (lambda b: b"Content-Length: 1e15\r\n\r\n" + b, -32601),
    "a length of 10**15 bytes": (lambda b: b"Content-Length: 1000000000000000\r\n\r\n" + b, -32600),
    "a lowercase header": (lambda b: b"content-length: %d\r\n\r\n" % len(b) + b, -32601),
    "no space after the colon": (lambda b: b"Content-Length:%d\r\n\r\n" % len(b) + b, -32601),
    "a tab and trailing spaces": (lambda b: b"Content-Length:\t%d  \r\n\r\n" % len(b) + b, -32601),
    "LF-only line ends": (lambda b: b"Content-Length: %d\n\n" % len(b) + b, -32601),
    "no header at all": (lambda b: b, -32601),
    "garbage before the header": (lambda b: b"\x00\xff garbage }\r\n" + frame(b), -32601),
    "a header line without a colon": (lambda b: b"Content-Length %d\r\n\r\n" % len(b) + b, -32601),
    "two different lengths": (lambda b: b"Content-Length: 3\r\nContent-Length: %d\r\n\r\n" % len(b) + b, -32601),
    "a 100 KB header line": (lambda b: b"X-Pad: " + b"a" * 100_000 + b"\r\n" + frame(b), -32601),
    "Content-Type and no length": (lambda b: b"Content-Type: application/vscode-jsonrpc\r\n\r\n" + b, -32601),
    "Content-Type first": (lambda b: b"Content-Type: application/vscode-jsonrpc; charset=utf-8\r\n"
                           b"Content-Length: %d\r\n\r\n" % len(b) + b, -32601),
    "NUL bytes in the header": (lambda b: b"Content-Length: \x00%d\r\n\r\n" % len(b) + b, -32601),
    "an unfinished header": (lambda b: b"Content-Length: %d\r\n" % len(b) + b, -32601),
    "Content-Length 20 KB too long": (lambda b: b"Content-Length: %d\r\n\r\n" % (len(b) + 20_000) + b, -32601),
}


def test_no_malformed_frame_leaves_the_server_deaf(wire):
    server = wire()
    server.initialize(ready=False)
    for name, (build, code) in FRAMINGS.items():
        msg_id = f"echo: {name}"
        server.write(build(_echo(msg_id)))
        assert server.responds(), f"deaf after {name!r}; {server.tail()}"
        assert server.process.poll() is None, f"exited after {name!r}; {server.tail()}"
        got = server.answers(msg_id)
        assert [answer["error"]["code"] for answer in got] == ([code] if code else []), (name, got)
    assert len(server.logs("Framing error")) <= 10                          # once each, then quiet


@pytest.mark.parametrize("name", FRAMINGS)
def test_the_framer_reads_the_same_messages_however_the_bytes_arrive(name):
    """The transport's Framer alone (no process): one read, or a byte at a time."""
    build, code = FRAMINGS[name]
    probe = json.dumps(message("wire/probe", None, "p")).encode()
    data = build(_echo("x")) + frame(probe)

    def messages(events) -> list:
        return [e for e in events if not isinstance(e, Problem)]

    whole = messages(Framer(lambda: 64 << 20).feed(data))
    framer, piecewise = Framer(lambda: 64 << 20), []
    for i in range(0, len(data), 3):
        piecewise += messages(framer.feed(data[i:i + 3]))
    assert piecewise == whole and whole[-1] == Body(probe)
    assert len(whole) == (2 if code else 1)


def test_the_framer_delivers_a_body_that_is_no_json_message_at_once():
    """Unless a wrong length may have cut a JSON message short or run past it: then the next
    header decides (FRAMINGS)."""
    for body in (b"hello", b"{garbage", b'"x"', b"[" * 10_000):
        assert Framer(lambda: 1 << 20).feed(frame(body)) == [Body(body)]
    for cut in (b'{"jsonrpc": "2.0", "id": 1, "method": "x"', b'{"a": "b', b'{"id": tr', b'{"a": 1}C', b""):
        events = Framer(lambda: 1 << 20).feed(frame(cut))
        assert not any(isinstance(event, Body) for event in events), cut


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=300) | st.sampled_from([b"Content-Length: 5\r\n\r\n", b"\r\n\r\n", b"{", b"}",
                                                           b"content-length:12\n\n", b"Content-Length: 99999999\r\n\r\n"]),
                max_size=20),
       st.integers(1, 64))
def test_the_framer_takes_any_bytes_in_bounded_memory(pieces, step):
    framer = Framer(lambda: 4096)
    data = b"".join(pieces)
    try:
        for i in range(0, len(data), step):
            for event in framer.feed(data[i:i + step]):
                assert isinstance(event, (Body, Problem, Oversized))
                assert not isinstance(event, Body) or len(event.data) <= 4096
            assert len(framer.buffer) <= 4096 + MAX_HEADER + 64
    except Unreadable as e:
        assert len(data) > 4096 and is_sentence(str(e))
    bodies = [json.dumps(message("wire/probe", None, n)).encode() for n in range(3)]
    framer = Framer(lambda: 4096)
    stream = b"".join(frame(body) for body in bodies)
    got = [e for i in range(0, len(stream), step) for e in framer.feed(stream[i:i + step])]
    assert got == [Body(body) for body in bodies]                # well-formed frames: exactly those


def test_a_stream_that_cannot_be_read_ends_the_process_with_a_message(wire):
    server = wire(max_message_mb="1")
    server.initialize(ready=False)
    server.write(b"x" * (3 << 19))                 # 1.5 MiB and no header: not an LSP client
    try:
        code = server.process.wait(30)
    except subprocess.TimeoutExpired:
        pytest.fail("the server stayed alive, reading nothing")
    assert code != 0
    assert "restart" in server.stderr()


def test_a_message_over_the_size_limit_is_refused_without_reading_it_whole(wire):
    server = wire(max_message_mb="1")
    server.initialize(ready=False)
    server.send(message("wire/echo", {"pad": "x" * (2 << 20)}, "huge"))
    refused = server.answer("huge")
    assert refused["error"]["code"] == -32600 and "max_message_mb" in refused["error"]["message"]
    assert server.responds()


# ---------------------------------------------------------------------------------------------
# 4. Protocol conformance

def test_requests_before_initialize_are_refused_and_initialize_still_works(wire):
    server = wire()
    assert server.answer(server.request("shutdown"))["error"]["code"] == -32002
    early = server.answer(server.request(INLINE, inline_params("file:///a.py", 0, 0)))
    assert early["error"]["code"] == -32002 and is_sentence(early["error"]["message"])
    server.open("file:///a.py", "x = 1\n")          # a notification before initialize is dropped
    result = server.initialize(ready=False)
    assert result["capabilities"]["inlineCompletionProvider"] is not None
    again = server.answer(server.request("initialize", {"capabilities": {}}))
    assert again["error"]["code"] == -32600
    assert server.stats()["documents"] == 0


def test_after_shutdown_requests_are_invalid_and_exit_ends_the_process(wire):
    server = wire()
    server.initialize(ready=False)
    assert server.call("shutdown") is None
    late = server.answer(server.request(INLINE, inline_params("file:///a.py", 0, 0)))
    assert late["error"]["code"] == -32600 and is_sentence(late["error"]["message"])
    server.open("file:///a.py", "x = 1\n")          # a notification: no answer
    server.notify("exit")
    assert server.process.wait(30) == 0
    assert [m for m in server.messages if "method" not in m and m.get("id") is None] == []


FIVE_LINES = "a\nb\nc\nd\ne\n"
BAD_REQUESTS = [   # (name, body, the id answered, the error code)
    ("jsonrpc 1.0", {"jsonrpc": "1.0", "id": "v1", "method": "shutdown"}, "v1", -32600),
    ("no jsonrpc", {"id": "v2", "method": "shutdown"}, "v2", -32600),
    ("an object id", {"jsonrpc": "2.0", "id": {"a": 1}, "method": "shutdown"}, None, -32600),
    ("an array id", {"jsonrpc": "2.0", "id": [1], "method": "shutdown"}, None, -32600),
    ("a boolean id", {"jsonrpc": "2.0", "id": True, "method": "shutdown"}, None, -32600),
    ("a fractional id", {"jsonrpc": "2.0", "id": 1.5, "method": "shutdown"}, None, -32600),
    ("a numeric method", {"jsonrpc": "2.0", "id": "m1", "method": 5}, "m1", -32600),
    ("a null method", {"jsonrpc": "2.0", "id": "m2", "method": None}, "m2", -32600),
    ("a notification sent with an id", message("workspace/didChangeConfiguration", {"settings": {}}, "n1"), "n1",
     -32600),
    ("params a string", message(INLINE, "x", "p1"), "p1", -32602),
    ("line 0.9", message(INLINE, inline_params("file:///five.py", 0.9, 0), "p2"), "p2", -32602),
    ("line '4'", message(INLINE, inline_params("file:///five.py", "4", 0), "p3"), "p3", -32602),
    ("character 9.9", message(INLINE, inline_params("file:///five.py", 2, 9.9), "p4"), "p4", -32602),
    ("line true", message(INLINE, inline_params("file:///five.py", True, 0), "p5"), "p5", -32602),
    ("line 2**31", message(INLINE, inline_params("file:///five.py", 2 ** 31, 0), "p6"), "p6", -32602),
    ("a negative character", message(INLINE, inline_params("file:///five.py", 1, -1), "p7"), "p7", -32602),
] + [
    (f"latent.accepted with {name}", message("workspace/executeCommand", {"command": "latent.accepted",
                                                                          "arguments": arguments}, f"a{i}"),
     f"a{i}", -32602)
    for i, (name, arguments) in enumerate([
        ("a span of strings", ["file:///five.py", "x", ["a", 0, 0, 0]]),
        ("a span of three", ["file:///five.py", "x", [0, 0, 0]]),
        ("a negative span", ["file:///five.py", "x", [-1, 0, 0, 0]]),
        ("a fractional span", ["file:///five.py", "x", [1.5, 0, 0, 0]]),
        ("a span that is a number", ["file:///five.py", "x", 7]),
        ("a uri that is a number", [5, "x", [0, 0, 0, 0]]),
        ("text that is a list", ["file:///five.py", ["x"], [0, 0, 0, 0]]),
    ])
] + [   # issue #20 item 9: a string was read as the list of its characters, and answered
    (f"latent.stats with arguments {name}", message("workspace/executeCommand", {"command": "latent.stats",
                                                                                "arguments": arguments}, f"s{i}"),
     f"s{i}", -32602)
    for i, (name, arguments) in enumerate([("a string", "abc"), ("an object", {"a": 1}), ("a number", 5)])
]


def test_every_malformed_request_gets_one_error_sentence(wire):
    server = wire()
    server.initialize(ready=False)
    server.open("file:///five.py", FIVE_LINES)
    for name, body, msg_id, code in BAD_REQUESTS:
        start = len(server.messages)
        server.send(body)
        got = server.wait(lambda m: "method" not in m and m.get("id") == msg_id, 15, start)
        assert got is not None, f"{name}: no answer; {server.tail()}"
        error = got.get("error")
        assert error is not None and error["code"] == code, (name, got)
        assert is_sentence(error["message"]) and "data" not in error, (name, error)
    start = len(server.messages)
    server.send(b'{"jsonrpc": "2.0", "id": "u", "method": "wire/echo", "params": "\xff\xfe"}')
    got = server.wait(lambda m: "method" not in m, 15, start)
    assert got["id"] is None and got["error"]["code"] == -32700        # invalid UTF-8
    assert server.responds()


MALFORMED_NOTIFICATIONS = [
    message("textDocument/didOpen"),
    message("textDocument/didOpen", {"textDocument": 3}),
    message("textDocument/didOpen", {"textDocument": {"uri": 5, "languageId": "python", "version": 1, "text": ""}}),
    message("textDocument/didOpen", {"textDocument": {"uri": "file:///n.py", "languageId": "python",
                                                      "version": "one", "text": "x"}}),
    message("textDocument/didChange"),
    message("textDocument/didChange", {"textDocument": {"uri": "file:///n.py", "version": 2}, "contentChanges": "x"}),
    message("textDocument/didChange", {"textDocument": {"uri": "file:///never.py", "version": 2},
                                       "contentChanges": [{"text": "x"}]}),
    message("textDocument/didChange", {"textDocument": {"uri": "file:///n.py", "version": 2},
                                       "contentChanges": [{"range": 5, "text": "x"}]}),
    message("textDocument/didClose", {"textDocument": None}),
    message("textDocument/didClose", [1, 2]),
    message("textDocument/didSave", {"textDocument": 1}),
    message("$/cancelRequest", {"id": {"a": 1}}),
    message("$/cancelRequest"),
    message("$/setTrace", {"value": 7}),
    message("$/unknown"),
    message("workspace/didChangeConfiguration", {"settings": 5}),
    message("workspace/didChangeConfiguration", "x"),
    message("workspace/didChangeConfiguration"),
    message("workspace/didChangeWorkspaceFolders", {"event": 1}),
    message("initialized", [1, 2]),
    message("wire/unknown", {"x": 1}),
    {"jsonrpc": "1.0", "method": "textDocument/didOpen", "params": {}},
    {"method": "textDocument/didOpen"},
    {"jsonrpc": "2.0", "method": 5},
    {"jsonrpc": "2.0", "method": None},
]


def test_a_notification_is_never_answered(wire):
    server = wire()
    server.initialize(ready=False)
    start = len(server.messages)
    for body in MALFORMED_NOTIFICATIONS:
        server.send(body)
    assert server.responds()
    answers = [m for m in server.messages[start:] if "method" not in m]
    assert [m["id"] for m in answers] == [answers[-1]["id"]], answers   # the probe's, nothing else


def test_a_response_without_jsonrpc_is_a_warning_not_a_failure(wire):
    server = wire()
    server.initialize(ready=False)
    server.send({"id": 99, "result": None})
    assert server.responds()
    assert 'The response 99 is ignored: A message must say "jsonrpc": "2.0".' in server.stderr()
    assert "Traceback" not in server.stderr(), server.tail()


# ---------------------------------------------------------------------------------------------
# 5. A bad change

def test_a_bad_change_keeps_the_good_ones_and_marks_the_document_stale(wire):
    server = wire(log_level="debug")
    server.initialize(ready=False)
    uri = "file:///wire/stale.py"
    server.open(uri, "abc\n")
    server.change(uri, 2, span(0, 0, 0, 0, "x\ny\n"), span(-1, 0, 0, 0, "zzz"))
    record = server.document(uri)
    assert (record["version"], record["sha256"], record["stale"]) == (2, digest("x\ny\nabc\n"), True)
    rejected = server.logs("Change 2 of file:///wire/stale.py", count=1)
    assert len(rejected) == 1 and is_sentence(rejected[0])
    answer = server.answer(server.request(INLINE, inline_params(uri, 3, 0)))   # line 3 exists after the insert
    assert answer.get("result") == {"items": []}
    assert any("diverged from the editor's; reopen the document" in line for line in server.logs("stale.py:4:1", count=1))

    server.change(uri, 3, {"text": "fresh\n"})       # the whole text: the copy is right again
    assert server.document(uri)["stale"] is False
    server.change(uri, 4, span(0, 0, 0, 0, "1"), span("0", 0, 0, 0, "2"), span(0, 0.5, 0, 1, "3"))
    record = server.document(uri)
    assert (record["sha256"], record["stale"]) == (digest("1fresh\n"), True)
    server.change(uri, 5, span(0, 0, 0, 0, "4"), {"text": "whole\n"}, span(0, 0, 0, 0, ">"))
    record = server.document(uri)
    assert (record["sha256"], record["stale"]) == (digest(">whole\n"), False)
    server.change(uri, 6, span(0, 0, 0, 0, 5))
    assert server.document(uri)["stale"] is True
    server.open(uri, "new\n", version=9)             # reopening trusts the editor's text again
    record = server.document(uri)
    assert (record["version"], record["sha256"], record["stale"]) == (9, digest("new\n"), False)


# ---------------------------------------------------------------------------------------------
# 6. Large documents

def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@pytest.mark.slow
def test_a_ten_megabyte_document_does_not_hold_up_the_others(wire, tmp_path):
    """Another document's (cached) completion right after a 10 MB Python file opens, and after each
    keystroke in it; the server's resident memory then. On the 2-core test machine (shared), one
    torch thread, the bundled model:

        before (tree-sitter parsed the whole file on open and incrementally on every keystroke,
        and a completion in it parsed it again from scratch: 5.9 s):
            open 2.38–3.10 s, keystrokes 0.44–0.77 s, 802 MB resident
        after (max_parse_kb = 1024: the file is not parsed; a completion in it takes 0.77 s):
            open 0.28–0.54 s, keystrokes 0.14–0.29 s, 348–369 MB resident

    What a keystroke still costs is completion.Document.apply rebuilding the line starts of the
    whole text (Lines, 0.16 s for 10 MB); the context builder reads windows around the cursor.
    """
    server = wire(bundled_env(tmp_path))
    server.initialize()
    small = "file:///wire/small.txt"
    server.open(small, "hello world\nthe quick brown fox ", "plaintext")
    server.call(INLINE, inline_params(small, 1, 20), timeout=60)           # the answer is cached now
    text = ("def f(x):\n    return x * 2  # padding padding padding\n\n" * 200_000)[: 10 << 20]
    text = text[: text.rfind("\n") + 1]
    line = text.count("\n")
    big = "file:///wire/big.py"
    started = time.perf_counter()
    server.open(big, text)
    server.call(INLINE, inline_params(small, 1, 20), timeout=120)
    opened = time.perf_counter() - started
    keystrokes = []
    for i in range(5):
        started = time.perf_counter()
        server.change(big, 2 + i, span(line, i, line, i, "x"))
        server.call(INLINE, inline_params(small, 1, 20), timeout=120)
        keystrokes.append(time.perf_counter() - started)
    rss = _rss_mb(server.process.pid)
    assert server.document(big)["parsed"] is False
    print(f"open {opened:.2f} s, keystrokes {min(keystrokes):.2f}–{max(keystrokes):.2f} s, {rss:.0f} MB resident")
    assert opened < 1.5 and statistics.median(keystrokes) < 0.5 and rss < 650   # 0.29–0.43 s on 2026-12-07
    said = [line for line in server.logs("big.py") if "max_parse_kb" in line]
    assert len(said) == 1                                                  # said once, not per keystroke


@pytest.mark.slow
def test_typing_in_a_ten_megabyte_document_does_not_slow_completions_elsewhere(wire, tmp_path):
    """A fresh completion in a small document after each keystroke in a 10 MB one: 0.86–0.96 s
    before, nearly all of it RelatedIndex re-reading the big document's windows; a document
    over max_parse_kb now offers no snippets. After: 0.29–0.64 s (median 0.35) on a quiet AVX-512
    machine of 2026-12-07, so the bound sits between that and the regression."""
    server = wire(bundled_env(tmp_path))
    server.initialize()
    small = "file:///wire/small.py"
    server.open(small, "def g(y):\n    return f(y) + ")
    text = ("def f(x):\n    return x * 2  # padding padding padding\n\n" * 200_000)[: 10 << 20]
    line = text.count("\n")
    big = "file:///wire/big.py"
    server.open(big, text)
    delays = []
    for i in range(4):
        server.change(big, 2 + i, span(line, 0, line, 0, "x"))
        server.change(small, 2 + i, span(1, 18 + i, 1, 18 + i, "a"))
        started = time.perf_counter()
        server.call(INLINE, inline_params(small, 1, 19 + i), timeout=120)
        delays.append(time.perf_counter() - started)
    assert statistics.median(delays) < 0.6, delays


def test_a_document_over_max_parse_kb_is_not_parsed_and_said_so_once(wire):
    server = wire(max_parse_kb="1")
    server.initialize(ready=False)
    uri = "file:///wire/grows.py"
    server.open(uri, "def f():\n    return 1\n")
    assert server.document(uri)["parsed"] is True
    server.change(uri, 2, span(2, 0, 2, 0, "# padding\n" * 120))          # 1.2 KiB: over the limit
    server.change(uri, 3, span(0, 0, 0, 0, "x"))
    assert server.document(uri)["parsed"] is False
    server.change(uri, 4, {"text": "def g():\n    pass\n"})               # small again: parsed again
    assert server.document(uri)["parsed"] is True
    assert len(server.logs("max_parse_kb")) == 1


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


# ---------------------------------------------------------------------------------------------
# Issue #20, 6. One long line

def test_a_line_of_megabytes_costs_what_the_budget_allows(wire, tmp_path):
    """A completion whose window ends in a line of several MB tokenized all of it, many times
    (~1.25 s a MB, holding the interpreter lock: every other document and the reading of stdin
    waited). Now windows are cut by characters first: the work is bounded by the prompt budget
    (2,048 tokens, at most 16 characters a token), not by the line."""
    server = wire(bundled_env(tmp_path))
    server.initialize()
    line = "values = [" + "1, " * ((4 << 20) // 3)
    big, small = "file:///wire/long_line.py", "file:///wire/small.py"
    server.open(big, "import os\n" + line)
    server.open(small, "def g(y):\n    return ")
    before = server.stats()["service"]["tokenized_chars"]
    long_id = server.request(INLINE, inline_params(big, 1, len(line)))
    small_id = server.request(INLINE, inline_params(small, 1, 11))
    assert server.responds(timeout=120)                               # stdin is read meanwhile
    for msg_id in (long_id, small_id):
        assert "result" in server.answer(msg_id, timeout=300)
    work = server.stats()["service"]["tokenized_chars"] - before
    assert work < 1 << 20, f"{work} characters tokenized for a 4 MiB line"   # before: 8,443,024


# ---------------------------------------------------------------------------------------------
# Issue #20, 7. Lone-CR line ends

def test_lone_cr_line_ends_complete_as_lf_ones(wire, tmp_path):
    """LSP ends lines at "\\n", "\\r\\n" and a lone "\\r". With lone CRs the model was shown raw CRs
    and tree-sitter saw one row of the whole file (a 100,000-line file: ~11 s a completion, and
    garbage); now the same code gets the same suggestion, in the document's line ends."""
    server = wire(bundled_env(tmp_path))
    server.initialize()
    code = "".join(f"def scale_{i}(values):\n    return [v * {i} for v in values]\n\n" for i in range(1500))
    code += "def total(values):\n    scaled = scale_7("
    line, character = code.count("\n"), len("    scaled = scale_7(")
    answers = {}
    for name, eol in (("lf", "\n"), ("crlf", "\r\n"), ("cr", "\r")):
        uri = f"file:///wire/{name}/scaled.py"                 # the same file name in the prompt's header
        server.open(uri, code.replace("\n", eol))
        result = server.call(INLINE, inline_params(uri, line, character), timeout=120)
        answers[name] = [(item["insertText"].replace(eol, "\n"), item["range"]) for item in result["items"]]
        assert all(eol == "\n" or "\n" not in item["insertText"].replace(eol, "") for item in result["items"])
        server.notify("textDocument/didClose", {"textDocument": {"uri": uri}})   # no snippets of it in the next
    assert answers["lf"], "the model suggested nothing here"
    assert answers["cr"] == answers["crlf"] == answers["lf"]


# ---------------------------------------------------------------------------------------------
# Issue #20, 9. Frames whose length is wrong, bodies that are not JSON, and open documents

def test_a_content_length_past_its_body_ends_at_the_next_header(wire):
    """A length 20 KB too large swallowed the next messages until that many bytes came (0 of 10
    answered); the next message's header ends the body, which is read too."""
    server = wire()
    server.initialize(ready=False)
    body = _echo("long")
    server.write(b"Content-Length: %d\r\n\r\n" % (len(body) + 20_000) + body)
    ids = [server.request("wire/echo") for _ in range(10)]
    for msg_id in ["long", *ids]:
        assert server.answer(msg_id)["error"]["code"] == -32601      # read: an unknown method
    [said] = server.logs("shorter than its Content-Length", count=1)
    assert is_sentence(said.split(": ", 1)[1])


@pytest.mark.parametrize("body", [b"hello", b"not json at all!", b"{garbage", b'"a string"', b"[" * 100_000])
def test_a_framed_body_that_is_not_json_is_answered_at_once(wire, body):
    """It was answered only once the next message came."""
    server = wire()
    server.initialize(ready=False)
    start = len(server.messages)
    server.write(frame(body))                                          # and nothing after it
    got = server.wait(lambda m: "method" not in m, 15, start)
    assert got is not None, f"not answered; {server.tail()}"
    assert got["id"] is None and got["error"]["code"] in (-32700, -32600)
    assert server.responds() and len(server.answers(None)) == 1


def test_open_documents_are_bounded_and_those_within_are_kept_whole(wire):
    """30,000 small documents took 2.2 GB. At most 2,000 are kept (a large editing session has
    hundreds; each costs 10-50 KB beyond its text), and four messages of max_message_mb of text
    in all; one more is not kept (a sentence in the log, empty completions that say why)."""
    server = wire(max_message_mb="1")
    server.initialize(ready=False)
    texts = {f"file:///many/m{i}.py": f"def f{i}(x):\n    return x + {i}\n" for i in range(2000)}
    for uri, text in texts.items():
        server.open(uri, text)
    extra = "file:///many/extra.py"
    server.open(extra, "x = 1\n")
    server.change(extra, 2, span(0, 0, 0, 0, "y = 2\n"))               # ignored quietly
    assert {d["uri"]: d["sha256"] for d in server.stats()["open"]} == {u: digest(t) for u, t in texts.items()}
    [refused] = server.logs("not kept", count=1)
    assert extra in refused and "2,000" in refused and is_sentence(refused.split(": ", 1)[1])
    answer = server.answer(server.request(INLINE, inline_params(extra, 0, 0)))
    assert answer["result"] == {"items": []} and server.notifications("latent/status")[-1]["last"]["reason"] == "not-kept"
    server.notify("textDocument/didClose", {"textDocument": {"uri": "file:///many/m0.py"}})
    server.open(extra, "x = 1\n")                                      # room again
    assert server.document(extra) is not None and server.stats()["documents"] == 2000
    assert len(server.logs("is not open")) == 0

    server = wire(max_message_mb="1")                                 # 4 MiB of text in all
    server.initialize(ready=False)
    big = "padding padding padding\n" * 36_000                         # 864,000 characters a message
    kept = [f"file:///big/{name}.txt" for name in "abcd"]
    for uri in kept:
        server.open(uri, big, "plaintext")
    server.open("file:///big/e.txt", big, "plaintext")                 # over: not kept
    server.open("file:///big/small.txt", "x = 1\n", "plaintext")
    server.change("file:///big/small.txt", 2, span(1, 0, 1, 0, big))   # grows past: dropped
    assert {d["uri"]: d["sha256"] for d in server.stats()["open"]} == {uri: digest(big) for uri in kept}
    assert [line.split()[3] for line in server.logs("not kept", count=2)] == ["file:///big/e.txt",
                                                                             "file:///big/small.txt"]


# ---------------------------------------------------------------------------------------------
# Fuzz: frames and params

OTHER_URIS = ("file:///fuzz/other.py", "file:///fuzz/b.rs", "untitled:Untitled-1", "", "not a uri", "file:///")
METHODS = (INLINE, "textDocument/completion", "workspace/executeCommand", "initialize", "wire/unknown",
           "textDocument/didOpen", "textDocument/didChange", "textDocument/didClose", "$/cancelRequest",
           "workspace/didChangeConfiguration", "$/setTrace", "initialized")
COMMANDS = ("latent.accepted", "latent.stats", "latent.clearCache", "latent.toggle", "latent.nothing")
ALPHABET = "abc xyz_(){}:é中\t\n\n"


class Fuzz:
    """Generated cases of frames and params against one server, and what must hold after each:
    the server is alive and answers, every well-formed request is answered exactly once, no
    notification is answered, and the server's copy of a document edited in well-formed frames
    (valid and invalid changes) is what the edits make of it. Used here and by
    benchmarks/fuzz_lsp.py; `counts` tallies cases and findings."""

    TRACKED = "file:///fuzz/doc.txt"
    CLAIM = 4096     # the largest Content-Length a malformed frame claims below the size limit

    def __init__(self, server: Wire, seed: int) -> None:
        self.server, self.random = server, random.Random(seed)
        self.text, self.stale, self.version = "hello\nworld\n", False, 1
        self.counts: collections.Counter = collections.Counter()
        self.findings: list[str] = []
        self._ids = itertools.count()
        server.open(self.TRACKED, self.text, "plaintext")

    # -- values --------------------------------------------------------------------------------
    def value(self, depth: int = 0):
        r = self.random
        kind = r.randrange(9 if depth < 3 else 6)
        if kind == 0:
            return None
        if kind == 1:
            return r.random() < 0.5
        if kind == 2:
            return r.choice([0, 1, -1, 2 ** 31 - 1, 2 ** 31, 2 ** 63, r.randrange(-100, 100)])
        if kind == 3:
            return r.choice([0.5, -0.0, 1e300, 9.9, r.uniform(-10, 10)])
        if kind in (4, 5):
            return "".join(r.choice(ALPHABET + "\ud800\x00\"\\") for _ in range(r.randrange(12)))
        if kind in (6, 7):
            return {r.choice(["line", "character", "uri", "text", "id", "range", "x", "latent"]): self.value(depth + 1)
                    for _ in range(r.randrange(4))}
        return [self.value(depth + 1) for _ in range(r.randrange(4))]

    def coordinate(self):
        return self.random.randrange(0, 5) if self.random.random() < 0.7 else self.value(2)

    def params(self, method: str):
        r = self.random
        if r.random() < 0.2:
            return self.value()
        uri = r.choice(OTHER_URIS)
        position = {"line": self.coordinate(), "character": self.coordinate()}
        if method in (INLINE, "textDocument/completion"):
            return {"textDocument": {"uri": r.choice([uri, self.TRACKED])}, "position": position,
                    "context": {"triggerKind": r.choice([1, 2, 9, "x"])}}
        if method == "workspace/executeCommand":
            return {"command": r.choice(COMMANDS), "arguments": [self.value() for _ in range(r.randrange(4))]}
        if method == "textDocument/didOpen":
            return {"textDocument": {"uri": uri, "languageId": r.choice(["python", "rust", "x", 5]),
                                     "version": self.coordinate(), "text": self.value()}}
        if method == "textDocument/didChange":
            return {"textDocument": {"uri": uri, "version": self.coordinate()},
                    "contentChanges": [{"range": {"start": position, "end": position}, "text": self.value()}]}
        if method == "workspace/didChangeConfiguration":
            return {"settings": {"latent": {r.choice(["enable", "maxNewTokensLine", "x", "languages"]): self.value()}}}
        return {"textDocument": {"uri": uri}, "id": self.value()}

    # -- the tracked document --------------------------------------------------------------------
    def offset(self, text: str, line: int, character: int) -> int:
        """LSP's lenient rule (the text is BMP-only and "\\n"-separated: one UTF-16 unit a character)."""
        lines = text.split("\n")
        if line >= len(lines):
            return len(text)
        return sum(len(x) + 1 for x in lines[:line]) + min(character, len(lines[line]))

    def edit(self) -> bytes:
        r = self.random
        changes = []
        for _ in range(r.randrange(1, 4)):
            choice = r.random()
            if choice < 0.15:
                new = "".join(r.choice(ALPHABET) for _ in range(r.randrange(30)))
                changes.append({"text": new})
                self.text, self.stale = new, False
            elif choice < 0.35:
                coordinates = [0, 0, 0, 0]
                coordinates[r.randrange(4)] = r.choice([-1, 0.5, "1", True, None, 2 ** 31, {"x": 1}])
                changes.append(span(*coordinates, "!"))
                self.stale = True
            else:
                count = self.text.count("\n") + 1
                l1, l2 = sorted(r.randrange(count + 1) for _ in range(2))
                c1, c2 = r.randrange(8), r.choice([r.randrange(8), 2 ** 31 - 1])
                if l1 == l2 and c2 < c1:
                    c1, c2 = c2, c1
                start, end = self.offset(self.text, l1, c1), self.offset(self.text, l2, c2)
                inserted = "".join(r.choice(ALPHABET) for _ in range(r.randrange(6)))
                changes.append(span(l1, c1, l2, c2, inserted))
                self.text = self.text[:start] + inserted + self.text[max(start, end):]
        self.version += 1
        return frame(message("textDocument/didChange", {"textDocument": {"uri": self.TRACKED, "version": self.version},
                                                       "contentChanges": changes}))

    # -- frames ----------------------------------------------------------------------------------
    def bad(self) -> bytes:
        r = self.random
        body = json.dumps(message(r.choice(METHODS), self.params(r.choice(METHODS)), r.choice([None, "b"]))).encode()
        kind = r.randrange(6)
        if kind == 0:
            build, _ = r.choice(list(FRAMINGS.values()))
            return build(body)
        if kind == 1:
            return bytes(r.randrange(256) for _ in range(r.randrange(200)))
        if kind == 2:
            return b"Content-Length: %d\r\n\r\n" % r.randrange(self.CLAIM) + body[: r.randrange(len(body) + 1)]
        if kind == 3:
            weird = r.choice([b"[1, 2]", b"5", b'"x"', b"null", b"{}", b'{"jsonrpc": "2.0"}', b"{\xff}",
                              b'{"jsonrpc": "2.0", "id": {"a": 1}, "method": "x"}', b"[" * 100_000])
            return frame(weird)
        if kind == 4:
            return frame(body)[: r.randrange(len(body))]
        return frame(body.replace(b"2.0", b"1.0"))

    def case(self) -> tuple[list[tuple[str, bytes, object]], int]:
        """Well-formed frames (requests, notifications, edits), then at most one malformed one."""
        r = self.random
        items = []
        for _ in range(r.randrange(1, 6)):
            choice = r.random()
            method = r.choice(METHODS)
            if choice < 0.3:
                items.append(("edit", self.edit(), None))
            elif choice < 0.65 and method not in ("initialized", "$/setTrace") and not method.startswith("textDocument/did"):
                msg_id = r.choice([f"f{next(self._ids)}", next(self._ids)])
                items.append(("request", frame(message(method, self.params(method), msg_id)), msg_id))
            else:
                items.append(("notification", frame(message(method, self.params(method))), None))
        bad = r.random() < 0.5
        if bad:
            items.append(("bad", self.bad(), None))
        return items, bad

    # -- one case --------------------------------------------------------------------------------
    def run(self) -> None:
        server, counts = self.server, self.counts
        items, bad = self.case()
        start = len(server.messages)
        counts["cases"] += 1
        for kind, data, _ in items:
            counts[kind + "s"] += 1
            server.write(data)
        for timeout in (2, 5, 15) if bad else (15,):   # a malformed frame may claim a probe's bytes
            if server.responds(timeout=timeout):
                break
            server.write(b" " * self.CLAIM)
        else:
            return self.finding("hangs" if server.process.poll() is None else "crashes", items)
        if server.process.poll() is not None:
            return self.finding("crashes", items)
        for kind, data, msg_id in items:
            if kind != "request":
                continue
            if server.wait(lambda m: "method" not in m and m.get("id") == msg_id, 15, start) is None:
                self.finding("missing responses", items, msg_id)
            elif len(server.answers(msg_id)) > 1:
                self.finding("duplicate responses", items, msg_id)
        nulls = [m for m in server.messages[start:] if "method" not in m and m.get("id") is None]
        if nulls and not bad:
            self.finding("answered notifications", items, nulls)
        record = server.document(self.TRACKED)
        if record is None or (record["sha256"], record["stale"]) != (digest(self.text), self.stale):
            self.finding("lost edits", items, record)
            self.version += 1
            self.text, self.stale = "reset\n", False
            server.change(self.TRACKED, self.version, {"text": self.text})

    def finding(self, kind: str, items, detail=None) -> None:
        self.counts[kind] += 1
        self.findings.append(f"{kind}: {detail!r} after {[data[:300] for _, data, _ in items]!r}")


@pytest.mark.slow
def test_fuzzed_frames_and_params(wire):
    """About 30 s of generated cases; `make fuzz` (benchmarks/fuzz_lsp.py) runs minutes of them."""
    server = wire()
    server.initialize(ready=False)
    fuzz = Fuzz(server, seed=12)
    deadline = time.monotonic() + 30
    while fuzz.counts["cases"] < 300 and time.monotonic() < deadline:
        fuzz.run()
        assert not fuzz.findings, fuzz.findings[0]
    assert fuzz.counts["cases"] >= 50 and fuzz.counts["bads"] >= 20, fuzz.counts
