"""A raw JSON-RPC client for the wire tests (tests/test_lsp_wire_*.py) and benchmarks/fuzz_lsp.py:
`python -m lsp_server lsp` fed raw bytes on stdin (no LSP library on this side), every frame it
writes parsed strictly from stdout; and FRAMINGS, the ways a client gets a frame wrong. The
`wire` fixture (tests/conftest.py) starts servers and checks their own output.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

from lsp_helpers import ROOT, server_env

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


def bundled_env(tmp: Path, **settings: str) -> dict:
    """The tests' environment with the model that loads (server_env's), not MISSING_MODEL."""
    return server_env(tmp, **settings)


# ---------------------------------------------------------------------------------------------
# Frames a client gets wrong

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
