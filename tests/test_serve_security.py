"""What the engine daemon and its HTTP face withstand (issues #12, #20): other users, clients
that stop reading, flood or dribble, long generations beside short ones, exhausted
descriptors, hostile HTTP input, impossible socket paths.

Everything goes through the real wire: a daemon served in a thread (or, where the process
itself matters, started from the command line) and real sockets and HTTP requests against it.
Scheduling tests use `Scripted`, an engine stand-in whose generations last as long as a test
needs; the rest use the tiny real engine.
"""
from __future__ import annotations

import gc
import http.client
import itertools
import json
import logging
import os
import re
import resource
import select
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from daemon_helpers import raw_connection
from model.engine import Engine
from model.params import RuntimeConfig, SamplingParams
from model.private_files import partial_path
from model.protocol import CancelToken, Generation, GenerationStats
from model.serve.cli import main as engine_cli
from model.serve.client import EngineClient, daemon_argv
from model.serve.daemon import TURN_STEPS, EngineDaemon
from model.serve.framing import RPCError, recv_frame, send_frame
from model.serve.openai_http import serve_http
from model.serve.scheduler import Client
from model.serve.remote import RemoteEngine

KEY = "the-owners-key"
ONE_THREAD = RuntimeConfig(threads=1)



class Scripted:
    """The real engine's tokenizer and names; each generation yields "x" every `pause` seconds
    up to max_new_tokens, after the prompt "hold" has waited for `gate`. Records the prompts
    it started, the prompt of every step in the order they ran, and those whose generation
    saw its cancel token."""

    def __init__(self, real, pause: float = 0.0) -> None:
        self.tokenizer, self.model_name = real.tokenizer, "scripted"
        self.fim_format, self.fim_layouts, self.languages = real.fim_format, real.fim_layouts, real.languages
        self.pause, self.gate = pause, threading.Event()
        self.started: list = []
        self.steps: list = []
        self.cancelled: list = []

    def stats(self) -> dict:
        return {"requests": len(self.started)}

    def generate(self, prompt, params: SamplingParams, *, cancel: CancelToken | None = None) -> Generation:
        stats = GenerationStats(prompt_tokens=1)
        return Generation(self._pieces(prompt, params, cancel or CancelToken(), stats), stats)

    def _pieces(self, prompt, params, cancel, stats):
        self.started.append(prompt)
        while prompt == "hold" and not self.gate.wait(0.01) and not cancel.cancelled:
            pass
        for _ in range(params.max_new_tokens):
            if cancel.cancelled:
                stats.finish_reason = "cancelled"
                self.cancelled.append(prompt)
                return
            time.sleep(self.pause)
            stats.generated_tokens += 1
            self.steps.append(prompt)
            yield "x"
        stats.finish_reason = "length"


class CountingTokenizer:
    """A tokenizer that counts the characters it is given to encode or count."""

    def __init__(self, real) -> None:
        self.real, self.chars = real, 0

    def encode(self, text: str, **options) -> list[int]:
        self.chars += len(text)
        return self.real.encode(text, **options)

    def count(self, text: str) -> int:
        self.chars += len(text)
        return self.real.count(text)

    def __getattr__(self, name: str):
        return getattr(self.real, name)


def _serve(engine, path) -> EngineDaemon:
    d = EngineDaemon(engine, path)
    d.bind()
    threading.Thread(target=d.serve_forever, daemon=True).start()
    return d


@pytest.fixture
def daemon(engine, tmp_path):
    d = _serve(engine, tmp_path / "engine.sock")
    yield d
    d.close()


@pytest.fixture
def scripted(engine):
    return Scripted(engine)


@pytest.fixture
def scripted_daemon(scripted, tmp_path):
    d = _serve(scripted, tmp_path / "scripted.sock")
    yield d
    scripted.gate.set()
    d.close()


@pytest.fixture
def face(daemon):
    server = serve_http(daemon, "127.0.0.1", 0, KEY)
    yield server
    server.close()


def _generate(s, request_id, prompt, **params) -> None:
    send_frame(s, {"id": request_id, "method": "generate", "params": {"prompt": prompt, **params}})


def _final(s, ids) -> dict:
    """Read until each of `ids` has its last reply (done or error); {id: that reply}."""
    final = {}
    while set(ids) - set(final):
        reply = recv_frame(s)
        assert reply is not None, f"the daemon closed the connection with {set(ids) - set(final)} unanswered"
        if reply.get("id") in ids and "chunk" not in reply:
            assert reply["id"] not in final, f"request {reply['id']} answered twice"
            final[reply["id"]] = reply
    return final


def _wait(condition, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _request(server, method, path, body=None, key=KEY, headers=None, timeout=30):
    """(status, parsed JSON body) of one HTTP request to the face."""
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    sent = {"Content-Type": "application/json", **(headers or {})}
    if key is not None:
        sent["Authorization"] = f"Bearer {key}"
    conn.request(method, path, body=json.dumps(body) if isinstance(body, dict) else body, headers=sent)
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, json.loads(data) if data else None


def _exchange(port, data: bytes, timeout=10) -> tuple[int, dict | None]:
    """Send raw bytes, read until the face closes: (status, JSON body); (0, None) for no answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    return (int(head.split()[1]), json.loads(body) if body else None) if head else (0, None)


def _closed_unanswered(s: socket.socket) -> bool:
    """Whether the face closed the connection without a byte of answer."""
    try:
        return s.recv(65536) == b""
    except ConnectionResetError:
        return True


def _is_openai_error(body, code=None) -> bool:
    error = (body or {}).get("error") or {}
    return (isinstance(error.get("message"), str) and error["message"].endswith(".")
            and error.get("type") == "invalid_request_error" and "code" in error
            and (code is None or error["code"] == code))


# ---------------------------------------------------------------------------------------------
# the HTTP face: a key, limits, turns, hang-ups

def test_the_http_face_answers_only_requests_with_its_key(face):
    completion = {"prompt": "x = ", "max_tokens": 2}
    for key in (None, "wrong", KEY + "x", ""):
        status, body = _request(face, "POST", "/v1/completions", completion, key=key)
        assert status == 401 and _is_openai_error(body, "invalid_api_key"), (key, status, body)
        assert _request(face, "GET", "/v1/models", key=key)[0] == 401
    status, body = _request(face, "POST", "/v1/completions", completion)
    assert status == 200 and body["usage"]["completion_tokens"] >= 1
    assert _request(face, "GET", "/v1/models")[0] == 200


def test_requests_beyond_the_limit_get_503_and_the_owner_is_still_served(scripted_daemon, scripted):
    server = serve_http(scripted_daemon, "127.0.0.1", 0, KEY, max_requests=2)
    try:
        held = [threading.Thread(target=_request, args=(server, "POST", "/v1/completions",
                                                        {"prompt": "hold", "max_tokens": 1})) for _ in range(2)]
        for thread in held:
            thread.start()
        assert _wait(lambda: scripted.started == ["hold"])   # one computes, one waits its turn: both served
        time.sleep(1.0)
        status, body = _request(server, "GET", "/v1/models")
        assert status == 503 and body["error"]["code"] == "too_many_connections"
        assert EngineClient(scripted_daemon.socket_path).call("info")["version"] == 1   # the socket is untouched
        scripted.gate.set()
        for thread in held:
            thread.join(timeout=10)
        assert _request(server, "GET", "/v1/models")[0] == 200
    finally:
        server.close()


def _dribble(sockets, stop: threading.Event, every: float) -> None:
    """Send one more byte of a header block on each socket every `every` seconds, never the end."""
    line = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1000
    for n in itertools.count():
        for s in sockets:
            try:
                s.send(line[n % len(line) : n % len(line) + 1])
            except OSError:
                pass
        if stop.wait(every):
            return


def test_the_owner_is_answered_while_32_connections_dribble_their_headers(face):
    """A local user without the key held every slot by sending a header byte every few seconds."""
    port = face.server_address[1]
    slow = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(32)]
    stop = threading.Event()
    dribbler = threading.Thread(target=_dribble, args=(slow, stop, 1.0), daemon=True)
    dribbler.start()
    try:
        time.sleep(0.5)
        answers = [_request(face, "GET", "/v1/models")[0] for _ in range(16)]
        answers.append(_request(face, "POST", "/v1/completions", {"prompt": "x = ", "max_tokens": 2})[0])
        assert answers == [200] * 17
    finally:
        stop.set()
        dribbler.join(timeout=10)
        for s in slow:
            s.close()


def test_a_header_block_gets_its_time_in_all_not_per_byte(daemon):
    """A byte every 0.25 s keeps every read within a 1 s timeout; the block's 1 s in all ends it."""
    server = serve_http(daemon, "127.0.0.1", 0, KEY, idle_timeout=1.0)
    block = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200   # a minute of bytes
    try:
        with socket.create_connection(server.server_address, timeout=10) as s:
            sent = 0
            for byte in block:
                try:
                    s.send(bytes([byte]))
                except OSError:
                    break
                sent += 1
                if select.select([s], [], [], 0.25)[0]:   # readable: the face closed it
                    break
            assert _closed_unanswered(s)
            assert sent < len(block)                          # closed while the bytes kept coming
    finally:
        server.close()


def test_idle_connections_are_closed(daemon):
    """By the face's own idle_timeout: the same connection to a face with an hour's, opened
    first, is still open when the one to a face with half a second's is closed."""
    server = serve_http(daemon, "127.0.0.1", 0, KEY, idle_timeout=0.5)
    patient = serve_http(daemon, "127.0.0.1", 0, KEY, idle_timeout=3600)
    try:
        for opening in (b"", b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n"):   # silent; headers cut off
            with socket.create_connection(patient.server_address, timeout=60) as kept, \
                    socket.create_connection(server.server_address, timeout=60) as s:   # 60 s: against a hang
                kept.sendall(opening)
                s.sendall(opening)
                assert s.recv(65536) == b""                                     # closed by the face, unanswered
                assert not select.select([kept], [], [], 0)[0]                  # the patient face's is still open
    finally:
        server.close()
        patient.close()


def test_headers_over_the_limit_get_431(face):
    filler = "".join(f"X-Filler-{i}: {'a' * 1000}\r\n" for i in range(40))   # 40 KB, no line too long
    request = (f"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n{filler}\r\n").encode()
    status, body = _exchange(face.server_address[1], request)
    assert status == 431 and body["error"]["type"] == "invalid_request_error"


def test_http_completions_take_their_turn_with_the_socket_clients(scripted_daemon, scripted):
    server = serve_http(scripted_daemon, "127.0.0.1", 0, KEY)
    try:
        owner = raw_connection(scripted_daemon)
        _generate(owner, 1, "hold", max_new_tokens=1)
        assert _wait(lambda: scripted.started == ["hold"])
        for i in (2, 3, 4):
            _generate(owner, i, f"a{i}", max_new_tokens=1)
        answer = {}
        http_thread = threading.Thread(target=lambda: answer.update(
            reply=_request(server, "POST", "/v1/completions", {"prompt": "h1", "max_tokens": 1})))
        http_thread.start()
        time.sleep(1.0)
        assert answer == {}                       # it waits: the one worker is busy with the owner's job
        scripted.gate.set()
        http_thread.join(timeout=10)
        assert answer["reply"][0] == 200 and answer["reply"][1]["choices"][0]["text"] == "x"
        assert all("done" in r for r in _final(owner, [1, 2, 3, 4]).values())
        assert scripted.started == ["hold", "h1", "a4", "a3", "a2"]   # clients in turn, newest first
    finally:
        server.close()


def test_an_editors_request_is_answered_within_a_turn_of_another_clients_long_generation(scripted_daemon, scripted):
    """Another tool of the same user generating 4,000 tokens held up the editor's ghost text to its end."""
    scripted.pause = 0.001
    long = {}
    tool = threading.Thread(target=lambda: long.update(text=EngineClient(scripted_daemon.socket_path).generate(
        "long", SamplingParams(max_new_tokens=4000)).run()))
    tool.start()
    assert _wait(lambda: len(scripted.steps) >= 50)
    before = len(scripted.steps)
    editor = EngineClient(scripted_daemon.socket_path)
    assert editor.generate("editor", SamplingParams(max_new_tokens=2)).run() == "xx"
    waited = scripted.steps.index("editor") - before      # steps of the long generation the editor waited for
    assert waited <= TURN_STEPS + 50 and scripted.steps.count("long") < 4000
    tool.join(timeout=60)
    assert long["text"] == "x" * 4000                       # and the long one went on where it stopped


def test_twenty_http_connections_take_one_turn_against_the_editors_one(scripted_daemon, scripted):
    server = serve_http(scripted_daemon, "127.0.0.1", 0, KEY)
    try:
        editor = raw_connection(scripted_daemon)
        _generate(editor, 1, "hold", max_new_tokens=1)
        assert _wait(lambda: scripted.started == ["hold"])
        http = [threading.Thread(target=_request, args=(server, "POST", "/v1/completions",
                                                        {"prompt": f"h{i}", "max_tokens": 1})) for i in range(20)]
        for thread in http:
            thread.start()
        time.sleep(2.0)                                     # all twenty queued behind "hold"
        _generate(editor, 2, "editor", max_new_tokens=1)
        time.sleep(0.2)
        scripted.gate.set()
        assert all("done" in reply for reply in _final(editor, [1, 2]).values())
        for thread in http:
            thread.join(timeout=10)
        assert scripted.started.index("editor") == 2        # one HTTP request's turn, then the editor's
        assert len(scripted.started) == 22
    finally:
        server.close()


def test_generations_that_take_turns_write_what_each_writes_alone(checkpoint, tmp_path):
    """Paused and resumed generations of the real engine (a sampled one, a greedy one) keep
    their text, while a short request is answered before either ends."""
    d = _serve(Engine.load(checkpoint, RuntimeConfig(compile=False, threads=1)), tmp_path / "turns.sock")
    try:
        asked = {"sampled": ("x = ", SamplingParams(max_new_tokens=300, temperature=1.0, seed=1)),
                 "greedy": ("class A:\n", SamplingParams(max_new_tokens=200)),
                 "editor": ("def add(a, b):\n    return", SamplingParams(max_new_tokens=8))}
        alone, made = {}, {}
        for name, request in asked.items():
            made[name] = EngineClient(d.socket_path).generate(*request)
            alone[name] = made[name].run()
        assert made["sampled"].stats.generated_tokens == 300 and made["greedy"].stats.generated_tokens == 200
        events, texts, first = [], {}, {name: threading.Event() for name in asked}

        def run(name):
            parts = []
            for piece in EngineClient(d.socket_path).generate(*asked[name]):
                parts.append(piece)
                first[name].set()
            texts[name] = "".join(parts)
            events.append(name)

        threads = {name: threading.Thread(target=run, args=(name,)) for name in asked}
        threads["sampled"].start()
        assert first["sampled"].wait(60)
        threads["greedy"].start()
        assert first["greedy"].wait(60) and events == []      # its first piece came while the other went on
        threads["editor"].start()
        for thread in threads.values():
            thread.join(timeout=120)
        assert texts == alone
        assert events[0] == "editor" and first["greedy"].is_set()
        assert events.index("editor") < events.index("sampled")
    finally:
        d.close()


@pytest.mark.parametrize("stream", [False, True])
def test_a_completion_stops_when_its_http_client_hangs_up(scripted_daemon, scripted, stream):
    scripted.pause = 0.005                          # 60000 tokens would take five minutes
    server = serve_http(scripted_daemon, "127.0.0.1", 0, KEY)
    try:
        body = json.dumps({"prompt": "long", "max_tokens": 60000, "stream": stream}).encode()
        with socket.create_connection(server.server_address, timeout=10) as s:
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode()
                      + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            assert _wait(lambda: scripted.started == ["long"])
            if stream:
                assert s.recv(65536).startswith(b"HTTP/1.1 200")
        assert _wait(lambda: scripted.cancelled == ["long"], 5)
        client = EngineClient(scripted_daemon.socket_path)
        assert client.generate("next", SamplingParams(max_new_tokens=2)).run() == "xx"   # the worker is free
    finally:
        server.close()


def _post_raw(length_header: str, body: bytes) -> bytes:
    return (f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
            f"{length_header}\r\n").encode() + body


@pytest.mark.parametrize("request_bytes", [
    _post_raw("Content-Length: 200000\r\n", b"[" * 100_000 + b"]" * 100_000),   # nested too deep
    _post_raw("Content-Length: abc\r\n", b"{}"),
    _post_raw("Content-Length: -5\r\n", b"{}"),
    _post_raw("Content-Length: 2\r\nContent-Length: 3\r\n", b"{}"),
    _post_raw("Content-Length: 99999999999\r\n", b"{}"),
    _post_raw("", b'{"prompt": "x"}'),                                                 # no length at all
], ids=["deep", "letters", "negative", "two-lengths", "too-large", "missing"])
def test_malformed_http_bodies_get_an_openai_error(face, request_bytes):
    status, body = _exchange(face.server_address[1], request_bytes)
    assert status in (400, 411, 413) and _is_openai_error(body), (status, body)


@pytest.mark.parametrize("raw", [
    b'{"prompt": "x", "max_tokens": 1e999}',
    b'{"prompt": "x", "max_tokens": -1}',
    b'{"prompt": "x", "max_tokens": 65537}',
    b'{"prompt": "x", "max_tokens": 2.5}',
    b'{"prompt": "x", "temperature": NaN}',
    b'{"prompt": "x", "temperature": Infinity}',
    b'{"prompt": "x", "top_p": -3}',
    b'{"prompt": "x", "n": "1"}',
    b'{"prompt": "x", "n": true}',
    b'{"prompt": "x", "n": 2}',
    b'{"prompt": "x", "stream": "yes"}',
    b'{"prompt": "x", "suffix": 7}',
    b'{"max_tokens": 2}',
    b'[1, 2]',
])
def test_bad_completion_fields_get_400_with_an_openai_error(face, raw):
    status, body = _request(face, "POST", "/v1/completions", raw)
    assert status == 400 and _is_openai_error(body), (status, body)


@pytest.mark.parametrize("raw, message", [
    (b'{"prompt": "x", "max_tokens": 0}', "max_tokens must be at least 1, got 0."),   # as vLLM answers it
    (b'{"prompt": "x", "seed": 100000000000000000000000000000}',
     "Setting 'seed' cannot be 100000000000000000000000000000; it takes a whole number from -9223372036854775808 "
     "to 9223372036854775807."),
    (b'{"prompt": "x", "seed": 9223372036854775808, "temperature": 0.5}', "Setting 'seed' cannot be"),
])
def test_zero_max_tokens_and_a_seed_beyond_64_bits_get_400_with_one_sentence(face, raw, message):
    """max_tokens 0 generated to the end of the context; a huge seed got an internal message."""
    status, body = _request(face, "POST", "/v1/completions", raw)
    assert status == 400 and _is_openai_error(body, "invalid_value"), (status, body)
    assert body["error"]["message"].startswith(message) and body["error"]["message"].count(". ") == 0


def test_a_prompt_longer_than_the_context_could_hold_is_refused_before_it_is_tokenized(face, engine):
    """A 1M-character prompt stalled every client for seconds while it was tokenized."""
    status, body = _request(face, "POST", "/v1/completions", {"prompt": "x" * 1_000_000, "max_tokens": 1})
    assert status == 400 and re.fullmatch(
        rf"The prompt has 1000000 characters, more than the context of {engine.runtime.max_context} tokens can "
        rf"hold \(at most \d+ characters\)\.", body["error"]["message"]), body
    assert _request(face, "POST", "/v1/completions", {"prompt": "x = 1\n" * 100, "max_tokens": 1})[0] == 200


def test_max_tokens_is_capped_at_sampling_params_limit(face):
    status, body = _request(face, "POST", "/v1/completions", {"prompt": "x", "max_tokens": 70000})
    assert status == 400 and "65536" in body["error"]["message"]


def test_a_prompt_beyond_the_context_is_a_400_not_a_dropped_connection(face):
    status, body = _request(face, "POST", "/v1/completions", {"prompt": "x " * 5000, "max_tokens": 1})
    assert status == 400 and "context" in body["error"]["message"]


# ---------------------------------------------------------------------------------------------
# the command line: loopback only, the port bound, the key kept private

@pytest.mark.parametrize("address", ["0.0.0.0:8012", "192.168.1.5:8012", "[::]:8012",
                                     "127.0.0.1:99999", "127.0.0.1:http"])
def test_a_non_loopback_http_address_is_refused_before_the_model_loads(tmp_path, capsys, address):
    sock = tmp_path / "s.sock"
    assert engine_cli(["serve", "--http", address, "--model", str(tmp_path / "missing"), "--socket", str(sock)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("latent: error: --http takes a loopback HOST:PORT") and err.count("\n") == 1
    assert not sock.exists()


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o606], ids=["0644", "0640", "0606"])
def test_an_api_key_file_others_can_read_is_refused_before_the_model_loads(tmp_path, capsys, mode):
    """It was taken without a word: whoever can read the key can use the face (ssh refuses such keys)."""
    key_file = tmp_path / "key"
    key_file.write_text("a-key-others-can-read\n")
    os.chmod(key_file, mode)
    argv = ["serve", "--http", "127.0.0.1:0", "--api-key-file", str(key_file), "--model", str(tmp_path / "missing"),
            "--socket", str(tmp_path / "s.sock")]
    assert engine_cli(argv) == 2
    err = capsys.readouterr().err
    assert err == (f"latent: error: --api-key-file is refused: {key_file} can be read or written by other users "
                   f"(mode {mode:04o}), who could then use the HTTP face; make it private (chmod 600 {key_file}), "
                   f"as ssh requires of a private key.\n")
    os.chmod(key_file, 0o600)
    assert engine_cli(argv) == 2
    assert "--api-key-file" not in capsys.readouterr().err    # a private one is taken (the model is what fails)


def test_a_taken_http_port_is_refused_before_the_model_loads(tmp_path, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = ["serve", "--http", f"127.0.0.1:{port}", "--model", str(tmp_path / "missing"),
                "--socket", str(tmp_path / "s.sock")]
        assert engine_cli(argv) == 2
    assert capsys.readouterr().err.startswith(f"latent: error: --http cannot listen on 127.0.0.1:{port}")
    assert not (tmp_path / "s.sock").exists()


def _line(stream, pattern: str, seconds: float) -> re.Match:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if select.select([stream], [], [], 0.5)[0]:
            line = stream.readline()
            if not line:
                break
            if match := re.search(pattern, line):
                return match
    raise AssertionError(f"no line matching {pattern!r}")


@pytest.mark.slow
def test_serve_prints_the_port_it_bound_and_keeps_the_key_private(checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    folder = tmp_path / "latent"
    argv = daemon_argv(str(checkpoint), ONE_THREAD, persist="none") + ["--http", "[::1]:0"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        port = int(_line(proc.stdout, r"^latent engine: HTTP on \[::1\]:(\d+) ", 120)[1])
        key_file = folder / "engine.key"
        assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600 and stat.S_IMODE(os.stat(folder).st_mode) == 0o700
        key = key_file.read_text().strip()
        assert len(key) >= 32
        conn = http.client.HTTPConnection("::1", port, timeout=30)
        conn.request("GET", "/v1/models")
        assert conn.getresponse().status == 401
        conn.close()
        remote = RemoteEngine(f"http://[::1]:{port}", tokenizer_dir=str(checkpoint))   # finds the key itself
        assert remote.api_key == key and remote.generate("x = ", SamplingParams(max_new_tokens=2)).run()
        assert engine_cli(["stop"]) == 0
        assert proc.wait(timeout=60) == 0
        assert not key_file.exists() and not (folder / "engine.http").exists()
    finally:
        proc.kill()
        proc.wait()


# ---------------------------------------------------------------------------------------------
# the socket: no client holds up the others

def test_a_client_that_stops_reading_is_dropped_and_the_others_go_on(scripted_daemon, scripted):
    greedy = raw_connection(scripted_daemon)
    for i in range(1, 41):
        _generate(greedy, i, f"g{i}", max_new_tokens=4000)   # never read
    done = []

    def other():
        client = EngineClient(scripted_daemon.socket_path)
        for _ in range(3):
            done.append(client.generate("o", SamplingParams(max_new_tokens=2)).run())

    thread = threading.Thread(target=other, daemon=True)
    thread.start()
    thread.join(timeout=20)
    assert done == ["xx"] * 3
    assert scripted.cancelled and scripted.cancelled[0].startswith("g")   # its generation was stopped
    greedy.close()


def test_a_reply_that_raises_mid_stream_ends_its_job_and_the_worker_goes_on(daemon, engine):
    """The worker is the consumer of a generation: a client whose replies raise (its first
    piece, then the error reply too) has its job ended and its generation closed — no cache row
    stays pinned — and the next client's request is answered. (gc is off: nothing may rest on
    the generation being collected; the job keeps a reference to it.)"""
    class Broken(Client):
        def send(self, message: dict) -> None:
            raise RuntimeError("this client cannot take a reply")

    prompt, params = "def add(a, b):\n    return", SamplingParams(max_new_tokens=40, stop_token_ids=())
    EngineClient(daemon.socket_path).generate(prompt, SamplingParams(max_new_tokens=1)).run()   # cached: pinned next
    broken = Broken()
    daemon.attach(broken)
    gc.disable()
    try:
        job = daemon.queue(broken, 1, prompt, params)
        assert _wait(lambda: job.id not in broken.jobs)                   # ended, not left half-way
        assert job.generation is not None and 1 <= job.generation.stats.generated_tokens < 40
        answer = []
        thread = threading.Thread(target=lambda: answer.append(
            EngineClient(daemon.socket_path).generate("x = ", SamplingParams(max_new_tokens=2)).run()), daemon=True)
        thread.start()
        thread.join(timeout=30)
        assert answer, "the worker no longer answers"
        engine.cache.evict(0)                                             # the worker is idle (answered)
        assert engine.cache.stats()["cache_tokens"] == 0                  # every row could go: none pinned
    finally:
        gc.enable()
        daemon.release(broken)


def test_a_client_queues_at_most_8_requests_and_a_cancelled_one_is_answered_at_once(scripted_daemon, scripted):
    s = raw_connection(scripted_daemon)
    _generate(s, 1, "hold", max_new_tokens=1)
    assert _wait(lambda: scripted.started == ["hold"])
    for i in range(2, 12):
        _generate(s, i, f"q{i}", max_new_tokens=1)
    send_frame(s, {"id": 20, "method": "cancel", "params": {"target": 5}})
    early = _final(s, [10, 11, 5, 20])
    assert early[10]["error"].startswith("Too many requests queued (8)") and "error" in early[11]
    assert early[5] == {"id": 5, "done": True, "stats": {"finish_reason": "cancelled"}} and early[20]["result"] is True
    scripted.gate.set()
    rest = _final(s, [1, 2, 3, 4, 6, 7, 8, 9])
    assert all(reply["stats"]["finish_reason"] == "length" for reply in rest.values())
    assert "q5" not in scripted.started


@pytest.mark.parametrize("target", [[1], {"a": 1}, "1", True, 1.5, None])
def test_cancel_with_a_malformed_target_gets_an_error_frame(scripted_daemon, scripted, target):
    s = raw_connection(scripted_daemon)
    _generate(s, 1, "hold", max_new_tokens=1)
    send_frame(s, {"id": 2, "method": "cancel", "params": {"target": target}})
    assert _final(s, [2])[2]["error"] == "A cancel needs the integer id of a request as its 'target'."
    scripted.gate.set()
    assert _final(s, [1])[1]["stats"]["finish_reason"] == "length"   # True is not request 1
    send_frame(s, {"id": 3, "method": "info", "params": {}})
    assert _final(s, [3])[3]["result"]["version"] == 1


@pytest.mark.parametrize("method, params, limit", [
    ("generate", {"prompt": "x" * 1_500_000}, "1048576 characters"),
    ("generate", {"prompt": [7] * 300_000}, "262144 token ids"),
    ("tokenize", {"text": "x" * 1_500_000}, "1048576"),
])
def test_a_huge_prompt_is_refused_at_once(scripted_daemon, scripted, method, params, limit):
    """Before any work: the tokenizer is handed none of it and no generation starts (a
    1M-character prompt held the interpreter for seconds in the tokenizer)."""
    scripted.tokenizer = CountingTokenizer(scripted.tokenizer)
    s = raw_connection(scripted_daemon)
    send_frame(s, {"id": 1, "method": method, "params": params})
    reply = _final(s, [1])[1]
    assert limit in reply["error"]
    assert scripted.tokenizer.chars == 0 and scripted.started == []
    assert EngineClient(scripted_daemon.socket_path).call("info")["version"] == 1


class WatchedTokenizer:
    """The real tokenizer, telling when an encode has begun and whether it has returned."""

    def __init__(self, real) -> None:
        self.real, self.begun, self.returned = real, threading.Event(), False

    def encode(self, text: str, **options) -> list[int]:
        self.begun.set()
        ids = self.real.encode(text, **options)
        self.returned = True
        return ids

    def __getattr__(self, name: str):
        return getattr(self.real, name)


def test_another_client_is_answered_while_a_long_text_is_tokenized(scripted_daemon, scripted):
    """A text of a million characters, within the limit, takes the tokenizer about a second,
    in which it held the interpreter: every other client of the daemon waited. Now a second
    client's call is answered while the first one's text is still being tokenized."""
    real = scripted.tokenizer
    scripted.tokenizer = watched = WatchedTokenizer(real)
    code = Path(__file__).read_text(encoding="utf-8")
    text = (code * (1_000_000 // len(code) + 1))[:1_000_000]
    slow, quick = raw_connection(scripted_daemon), raw_connection(scripted_daemon)
    send_frame(slow, {"id": 1, "method": "tokenize", "params": {"text": text}})
    assert watched.begun.wait(30)
    send_frame(quick, {"id": 2, "method": "info", "params": {}})
    assert _final(quick, [2])[2]["result"]["version"] == 1
    assert not watched.returned, "the other client was answered only once the long text was tokenized"
    assert _final(slow, [1])[1]["result"] == real.encode(text)


@pytest.mark.slow
def test_running_out_of_descriptors_does_not_stop_the_daemon(checkpoint, tmp_path):
    sock = tmp_path / "fd.sock"
    log_path = tmp_path / "daemon.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(daemon_argv(str(checkpoint), ONE_THREAD, socket_path=sock, persist="none"),
                                stdout=log, stderr=log)
    try:
        assert _wait(lambda: _answers(sock), 120)
        in_use = len(os.listdir(f"/proc/{proc.pid}/fd"))
        resource.prlimit(proc.pid, resource.RLIMIT_NOFILE, (in_use + 4, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
        held = []
        for _ in range(10):                     # more than the daemon may open
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(5)
            s.connect(str(sock))
            send_frame(s, {"type": "hello", "version": 1})
            held.append(s)
        time.sleep(1.0)
        assert proc.poll() is None and sock.exists()   # still serving
        for s in held:
            s.close()
        assert _wait(lambda: _answers(sock), 20)
        # logged once per shortage, not once per refused accept: under load a descriptor freed
        # for a moment (a connection's, a file's) can end one shortage and a second begin
        assert 1 <= open(log_path).read().count("out of file descriptors") <= 2
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _answers(sock) -> bool:
    try:
        client = EngineClient(sock, connect_timeout=1)
    except RPCError:
        return False
    ok = client.call("info")["version"] == 1
    client.close()
    return ok


# ---------------------------------------------------------------------------------------------
# socket paths the OS cannot bind

def test_a_socket_path_over_the_limit_is_one_sentence_for_a_client(tmp_path):
    """Said before a daemon is started and waited for (connect_timeout)."""
    path, started = tmp_path / ("s" * 120 + ".sock"), tmp_path / "a daemon started"
    with pytest.raises(RPCError, match=r"bytes long, but a Unix socket path must be shorter than 10[48] bytes"):
        EngineClient(path, spawn=[sys.executable, "-c", f"open({str(started)!r}, 'w').close()"], connect_timeout=60)
    assert not started.exists()


def test_a_socket_path_over_the_limit_is_one_sentence_when_serving(tmp_path, capsys):
    path = tmp_path / ("s" * 120 + ".sock")
    assert engine_cli(["serve", "--socket", str(path), "--model", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "a Unix socket path must be shorter than" in err and err.count("\n") == 1


# ---------------------------------------------------------------------------------------------
# the saved cache (issue #20): no link followed, no planted file reused, read or loaded

CACHED = "def add(a, b):\n    return a + b\n"


def _serve_once(engine, tmp_path, persist) -> int:
    """A daemon keeping its cache in `persist`: one generation, then a stop (which saves);
    the prompt tokens that generation reused."""
    d = EngineDaemon(engine, tmp_path / "keep.sock", persist=persist)
    d.bind()
    t = threading.Thread(target=d.serve_forever, daemon=True)
    t.start()
    try:
        generation = EngineClient(d.socket_path).generate(CACHED, SamplingParams(max_new_tokens=2))
        generation.run()
    finally:
        d.stop()
        t.join(timeout=30)
    assert not t.is_alive()
    return generation.stats.reused_tokens


def _a_saved_cache(engine, tmp_path) -> bytes:
    folder = tmp_path / "made"
    folder.mkdir(mode=0o700)
    engine.clear_cache()
    _serve_once(engine, folder, folder / "cache.msgpack")
    engine.clear_cache()
    return (folder / "cache.msgpack").read_bytes()


def _said(caplog, start: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(start)]


def test_a_link_planted_where_the_cache_is_written_is_not_followed(engine, tmp_path, caplog):
    caplog.set_level(logging.INFO, "latent.engine")
    victim = tmp_path / "victim.txt"
    victim.write_text("the owner's file\n")
    saved = tmp_path / "cache.msgpack"
    partial_path(saved).symlink_to(victim)
    engine.clear_cache()
    _serve_once(engine, tmp_path, saved)
    assert victim.read_text() == "the owner's file\n"
    assert partial_path(saved).is_symlink() and not saved.exists()
    assert _said(caplog, "could not save the cache") == [
        f"could not save the cache to {saved}: {partial_path(saved)} is in the way and is not a file of this "
        f"user; it was left alone."]


def test_a_file_planted_at_the_temporary_name_is_replaced_not_written_through(engine, tmp_path):
    saved = tmp_path / "cache.msgpack"
    planted = partial_path(saved)
    planted.write_bytes(b"")
    os.chmod(planted, 0o644)                      # readable by others, and held open by one
    with open(planted, "rb") as handle:
        engine.clear_cache()
        _serve_once(engine, tmp_path, saved)
        assert handle.read() == b""               # the cache went to a new file, not this one
    assert stat.S_IMODE(os.stat(saved).st_mode) == 0o600 and not planted.exists()
    engine.clear_cache()
    assert _serve_once(engine, tmp_path, saved) > 0   # and it is the cache: restored at the next start


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o770])
def test_a_cache_in_a_folder_others_can_write_is_neither_loaded_nor_written(engine, tmp_path, caplog, mode):
    data = _a_saved_cache(engine, tmp_path)
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, mode)                        # /tmp is 1777: the sticky bit does not make it safe
    saved = shared / "cache.msgpack"
    saved.write_bytes(data)                       # a valid cache, as one planted there would be
    os.chmod(saved, 0o600)
    caplog.set_level(logging.INFO, "latent.engine")
    assert _serve_once(engine, tmp_path, saved) == 0   # served, from an empty cache
    assert saved.read_bytes() == data and sorted(os.listdir(shared)) == ["cache.msgpack"]
    assert _said(caplog, "not keeping the cache") == [
        f"not keeping the cache across restarts: The folder {shared} can be written by other users (mode {mode:04o})"]
    assert not _said(caplog, "restored") and not _said(caplog, "saved")


@pytest.mark.parametrize("planted", ["readable by others", "owned by another user"])
def test_a_cache_file_that_is_not_ours_alone_is_not_loaded(engine, tmp_path, caplog, planted):
    saved = tmp_path / "cache.msgpack"
    saved.write_bytes(_a_saved_cache(engine, tmp_path))
    if planted == "readable by others":
        os.chmod(saved, 0o644)
        reason = f"{saved} can be read or written by other users (mode 0644)"
    else:
        if os.geteuid() != 0:
            pytest.skip("giving a file to another user needs root")
        os.chmod(saved, 0o600)
        os.chown(saved, 65534, 65534)
        reason = f"{saved} is not a file of this user"
    caplog.set_level(logging.INFO, "latent.engine")
    assert _serve_once(engine, tmp_path, saved) == 0
    assert _said(caplog, "not restoring the cache") == [f"not restoring the cache: {reason}"]
    assert os.stat(saved).st_uid == os.geteuid() and stat.S_IMODE(os.stat(saved).st_mode) == 0o600   # saved anew
