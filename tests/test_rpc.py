"""The shared engine daemon, its client, its HTTP face and the remote backend (model/serve/)."""
from __future__ import annotations

import os
import signal
import socket
import stat
import struct
import threading
import time

import msgpack
import pytest

from daemon_helpers import raw_connection
from model import options
from model.engine import Engine
from model.params import RuntimeConfig, SamplingParams
from model.protocol import CancelToken, EngineProtocol
from model.serve.cli import build_parser, persist_path
from model.serve.cli import main as engine_cli
from model.serve.client import EngineClient, daemon_argv
from model.serve.daemon import EngineDaemon
from model.serve.framing import RPCError, recv_frame, send_frame
from model.serve.remote import RemoteEngine, RemoteError

ONE_THREAD = RuntimeConfig(threads=1)   # daemons this module starts share two cores with it



@pytest.fixture
def daemon(engine, tmp_path):
    d = EngineDaemon(engine, tmp_path / "engine.sock")
    d.bind()
    thread = threading.Thread(target=d.serve_forever, daemon=True)
    thread.start()
    yield d
    d.stop()
    thread.join(timeout=5)


PROMPT = "<｜fim▁begin｜>def add(a, b):\n    <｜fim▁hole｜>\n<｜fim▁end｜>"


def test_socket_is_private(daemon):
    assert stat.S_IMODE(os.stat(daemon.socket_path).st_mode) == 0o600


def test_default_socket_lives_in_a_private_runtime_dir(tmp_path, monkeypatch):
    from model.serve.framing import default_socket_path

    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    path = default_socket_path()
    assert path.parent == tmp_path / "latent"
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700


def test_client_generates_the_same_text_as_the_engine(daemon, engine):
    expected = engine.generate(PROMPT, SamplingParams(max_new_tokens=12)).run()
    client = EngineClient(daemon.socket_path)
    gen = client.generate(PROMPT, SamplingParams(max_new_tokens=12))
    assert gen.run() == expected
    assert gen.stats.prompt_tokens > 0 and gen.stats.finish_reason in ("length", "eos", "stop")
    assert client.fim_format == "deepseek"
    assert client.tokenizer.count("def") == engine.tokenizer.count("def")
    assert (client.fim_layouts, client.languages) == (engine.fim_layouts, engine.languages)
    assert isinstance(client, EngineProtocol)


def test_zero_new_tokens_prefills_the_prompt_and_writes_nothing(daemon):
    """max_new_tokens = 0 asks for the prompt alone (its latents cached): it generated to the end
    of the context before (#20 item 9)."""
    client = EngineClient(daemon.socket_path)
    gen = client.generate(PROMPT, SamplingParams(max_new_tokens=0))
    assert gen.run() == ""
    assert (gen.stats.generated_tokens, gen.stats.finish_reason) == (0, "length")
    again = client.generate(PROMPT, SamplingParams(max_new_tokens=2))
    again.run()
    assert again.stats.reused_tokens == again.stats.prompt_tokens - 1   # the prompt was cached


def test_clear_cache_empties_the_daemons_cache(daemon, engine):
    client = EngineClient(daemon.socket_path)
    client.generate(PROMPT, SamplingParams(max_new_tokens=4)).run()
    assert client.stats()["cache_tokens"] > 0
    client.clear_cache()
    assert engine.stats()["cache_tokens"] == 0
    again = client.generate(PROMPT, SamplingParams(max_new_tokens=4))
    again.run()
    assert again.stats.reused_tokens == 0                        # computed afresh: nothing was kept


def test_two_clients_stream_at_once_and_each_gets_its_own_text(daemon, engine):
    prompts = [PROMPT, "for i in range(10):\n    "]
    expected = [engine.generate(p, SamplingParams(max_new_tokens=16)).run() for p in prompts]
    results = [None, None]

    def run(i):
        results[i] = EngineClient(daemon.socket_path).generate(prompts[i], SamplingParams(max_new_tokens=16)).run()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results == expected


def test_cancel_across_the_socket(daemon):
    client = EngineClient(daemon.socket_path)
    token = CancelToken()
    gen = client.generate("x = ", SamplingParams(max_new_tokens=400, temperature=1.0, seed=1), cancel=token)
    token.cancel()
    gen.run()
    assert gen.stats.finish_reason == "cancelled"
    assert gen.stats.generated_tokens < 400
    assert client.generate("y = ", SamplingParams(max_new_tokens=2)).run() is not None   # the connection still works


@pytest.mark.parametrize("payload", [
    struct.pack(">I", 5) + b"\xc1\xc1\xc1\xc1\xc1",            # not msgpack
    struct.pack(">I", 3) + msgpack.packb([1, 2]),               # not a map
    struct.pack(">I", 1 << 30),                                 # oversized
])
def test_bad_frames_get_an_error_and_that_connection_closes(daemon, payload):
    bad = raw_connection(daemon)
    other = EngineClient(daemon.socket_path)
    bad.sendall(payload)
    reply = recv_frame(bad)
    assert "error" in reply
    assert recv_frame(bad) is None                               # closed by the daemon
    assert other.generate("z = ", SamplingParams(max_new_tokens=2)).run() is not None   # others keep being served


def test_truncated_frame_closes_only_that_connection(daemon):
    bad = raw_connection(daemon)
    bad.sendall(struct.pack(">I", 100) + b"\x80")
    bad.shutdown(socket.SHUT_WR)
    time.sleep(0.2)
    assert EngineClient(daemon.socket_path).call("info")["fim_format"] == "deepseek"


def test_wrong_protocol_version_is_refused(daemon):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(daemon.socket_path))
    send_frame(s, {"type": "hello", "version": 99})
    assert "version" in recv_frame(s)["error"]


def test_a_bad_sampling_value_is_an_error_reply_not_a_dropped_connection(daemon):
    s = raw_connection(daemon)
    params = {"prompt": "x = ", **SamplingParams().as_dict(), "temperature": -1.0}
    send_frame(s, {"id": 1, "method": "generate", "params": params})
    reply = recv_frame(s)
    assert reply["id"] == 1 and reply["error"].startswith("Setting 'temperature' cannot be -1.0")
    send_frame(s, {"id": 2, "method": "generate", "params": {"prompt": "x = ", "temprature": 0.5}})
    assert recv_frame(s)["error"] == "Unknown sampling field 'temprature'."
    send_frame(s, {"id": 3, "method": "info", "params": {}})
    assert recv_frame(s)["result"]["version"] == 1               # the same connection goes on


def test_unknown_method_is_an_error_not_a_crash(daemon):
    client = EngineClient(daemon.socket_path)
    with pytest.raises(RPCError, match="Unknown method"):
        client.call("explode")
    assert client.call("info")["version"] == 1


def test_a_method_that_is_no_name_is_an_error_reply_and_the_connection_goes_on(daemon):
    s = raw_connection(daemon)
    send_frame(s, {"id": 1, "method": ["a", "list"], "params": {}})   # unhashable: was a TypeError in the reader
    assert recv_frame(s) == {"id": 1, "error": "Unknown method ['a', 'list']."}
    send_frame(s, {"id": 2, "method": "info", "params": {}})
    assert recv_frame(s)["result"]["version"] == 1


def test_a_closed_client_connects_again_on_its_next_request(daemon):
    client = EngineClient(daemon.socket_path)
    client.close()
    assert client.call("info")["version"] == 1
    client.close()
    gen = client.generate("x = ", SamplingParams(max_new_tokens=2))
    gen.run()
    assert gen.stats.generated_tokens >= 1 and gen.stats.finish_reason != "error"


def test_no_daemon_is_a_clear_error(tmp_path):
    with pytest.raises(RPCError, match="No engine daemon answers"):
        EngineClient(tmp_path / "none.sock")


@pytest.mark.slow
def test_killed_daemon_is_restarted_and_the_next_completion_works(checkpoint, tmp_path):
    sock = tmp_path / "d.sock"
    client = EngineClient(sock, spawn=daemon_argv(str(checkpoint), ONE_THREAD, socket_path=sock), connect_timeout=120)
    first = client.generate(PROMPT, SamplingParams(max_new_tokens=6)).run()
    pid = client.info["pid"]
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.5)
    assert sock.exists()                                         # the stale socket is left behind
    again = client.generate(PROMPT, SamplingParams(max_new_tokens=6)).run()   # reconnects, restarts, retries once
    assert again == first
    assert client.info["pid"] != pid
    os.kill(client.info["pid"], signal.SIGTERM)


# ---------------------------------------------------------------------------------------------
# the command line: latent engine serve | stop | status

def test_serve_flags_come_from_the_runtime_config(tmp_path):
    runtime = RuntimeConfig(threads=2, quantize="int8", cache_mb=64, reuse="shift", shift_max_steps=4)
    argv = daemon_argv("ckpt", runtime, socket_path=tmp_path / "s.sock", idle_exit=60, persist="none")
    assert argv[1:4] == ["-m", "model.serve", "serve"]
    args = build_parser().parse_args(argv[3:])
    assert options.build(RuntimeConfig, options.from_arguments(RuntimeConfig, args)) == runtime
    assert (args.model, args.socket, args.idle_exit) == ("ckpt", tmp_path / "s.sock", 60.0)
    assert persist_path(args.persist, args.socket) is None
    assert daemon_argv(None, RuntimeConfig())[4:] == []          # defaults travel as no flags at all


def test_the_cache_file_defaults_to_one_beside_the_socket(tmp_path):
    sock = tmp_path / "engine.sock"
    assert persist_path(None, sock) == tmp_path / "cache.msgpack"
    assert persist_path("None", sock) is None
    assert persist_path(str(tmp_path / "mine.msgpack"), sock) == tmp_path / "mine.msgpack"


def test_a_bad_runtime_flag_is_one_line_and_exit_status_2(tmp_path, capsys):
    assert engine_cli(["serve", "--threads", "many", "--socket", str(tmp_path / "s.sock")]) == 2
    err = capsys.readouterr().err
    assert err == "latent: error: Setting 'threads' cannot be 'many'; it takes a whole number from 0 to 1024.\n"
    assert not (tmp_path / "s.sock").exists()


@pytest.mark.slow
def test_a_daemon_served_from_the_command_line_saves_its_cache_at_exit(checkpoint, engine, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))        # where start_daemon logs
    sock = tmp_path / "cli.sock"
    argv = daemon_argv(str(checkpoint), ONE_THREAD, socket_path=sock)   # no --persist
    client = EngineClient(sock, spawn=argv, connect_timeout=120)
    client.generate(PROMPT, SamplingParams(max_new_tokens=2)).run()
    assert engine_cli(["stop", "--socket", str(sock)]) == 0
    saved = tmp_path / "cache.msgpack"
    deadline = time.monotonic() + 60
    while not saved.is_file() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert saved.is_file()
    engine.clear_cache()
    assert engine.load_cache(saved) >= engine.tokenizer.count(PROMPT)   # the prompt's latents came back


def test_stale_socket_file_is_replaced(engine, tmp_path):
    path = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()                                                    # a socket file nobody listens on
    d = EngineDaemon(engine, path)
    d.bind()
    d.close()


def test_a_closed_daemon_has_ended_its_worker(engine, tmp_path):
    """close() returns once the worker has ended its turn (its client dropped, the generation
    cancelled): nothing of the daemon computes after it — nor, at exit, while Python finalizes."""
    before = set(threading.enumerate())
    d = EngineDaemon(engine, tmp_path / "w.sock")
    d.bind()
    threading.Thread(target=d.serve_forever, daemon=True).start()
    gen = EngineClient(d.socket_path).generate(PROMPT, SamplingParams(max_new_tokens=2000, stop_token_ids=()))
    next(gen)                                                    # the worker is generating
    workers = [t for t in threading.enumerate() if t not in before and t.name == "latent-engine-worker"]
    d.close()
    assert workers and not any(t.is_alive() for t in workers)


def test_idle_daemon_exits(engine, tmp_path):
    d = EngineDaemon(engine, tmp_path / "idle.sock", idle_exit_s=0.3)
    t = threading.Thread(target=d.serve_forever, daemon=True)
    t.start()
    t.join(timeout=10)
    assert not t.is_alive()
    assert not (tmp_path / "idle.sock").exists()


# ---------------------------------------------------------------------------------------------
# HTTP face and the remote backend

HTTP_KEY = "test-key"
AUTH = {"Authorization": f"Bearer {HTTP_KEY}"}


@pytest.fixture
def http_url(daemon):
    from model.serve.openai_http import serve_http

    server = serve_http(daemon, "127.0.0.1", 0, HTTP_KEY)
    yield f"http://{server.address}"
    server.close()


def test_remote_backend_streams_from_the_http_face(http_url, engine, checkpoint, monkeypatch):
    expected = engine.generate(PROMPT, SamplingParams(max_new_tokens=10)).run()
    monkeypatch.setenv("LATENT_TEST_KEY", HTTP_KEY)
    remote = RemoteEngine(http_url, tokenizer_dir=str(checkpoint), api_key_env="LATENT_TEST_KEY")
    gen = remote.generate(PROMPT, SamplingParams(max_new_tokens=10))
    assert gen.run() == expected
    assert remote.fim_format == "deepseek"
    assert remote.model == engine.model_name
    assert isinstance(remote, EngineProtocol)


def test_a_remote_server_keeps_the_healing_contract(http_url, engine, checkpoint, monkeypatch):
    """The OpenAI API cannot constrain the first tokens: the healed text goes back on the prompt
    and heads the answer, which is what the pipeline then takes off (SamplingParams.heal)."""
    monkeypatch.setenv("LATENT_TEST_KEY", HTTP_KEY)
    remote = RemoteEngine(http_url, tokenizer_dir=str(checkpoint), api_key_env="LATENT_TEST_KEY")
    prompt, heal = PROMPT[:-2], PROMPT[-2:]
    expected = engine.generate(PROMPT, SamplingParams(max_new_tokens=10)).run()
    assert remote.generate(prompt, SamplingParams(max_new_tokens=10, heal=heal)).run() == heal + expected


def test_http_face_non_streaming_and_suffix(http_url, engine):
    import json
    import urllib.request

    body = {"prompt": "def add(a, b):\n    ", "suffix": "\n", "max_tokens": 8, "temperature": 0}
    req = urllib.request.Request(f"{http_url}/v1/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", **AUTH})
    reply = json.loads(urllib.request.urlopen(req, timeout=30).read())
    expected = engine.generate(PROMPT, SamplingParams(max_new_tokens=8)).run()
    assert reply["choices"][0]["text"] == expected
    assert reply["usage"]["completion_tokens"] >= 1


def test_http_face_answers_a_bad_sampling_value_with_its_sentence(http_url):
    import json
    import urllib.error
    import urllib.request

    body = {"prompt": "x = ", "max_tokens": -3}
    req = urllib.request.Request(f"{http_url}/v1/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", **AUTH})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=10)
    message = json.loads(info.value.read())["error"]["message"]
    assert info.value.code == 400 and message.startswith("Setting 'max_new_tokens' cannot be -3")


def test_http_face_rejects_bad_requests(http_url):
    import json
    import urllib.error
    import urllib.request

    req = urllib.request.Request(f"{http_url}/v1/completions", data=b"{broken",
                                 headers={"Content-Type": "application/json", **AUTH})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=10)
    assert info.value.code == 400 and "JSON" in json.loads(info.value.read())["error"]["message"]


def test_remote_errors_are_one_sentence(tmp_path, monkeypatch):
    with pytest.raises(RemoteError, match="cannot be reached"):
        RemoteEngine("http://127.0.0.1:9", model="x").generate("a").run()
    monkeypatch.delenv("LATENT_TEST_KEY", raising=False)
    with pytest.raises(RemoteError, match="LATENT_TEST_KEY"):
        RemoteEngine("http://127.0.0.1:9", model="x", api_key_env="LATENT_TEST_KEY")


def test_the_cache_survives_a_daemon_restart(checkpoint, tmp_path, caplog):
    saved = tmp_path / "cache.msgpack"
    caplog.set_level("INFO", logger="latent.engine")

    def run_daemon(engine):
        d = EngineDaemon(engine, tmp_path / "p.sock", persist=saved)
        d.bind()
        t = threading.Thread(target=d.serve_forever, daemon=True)
        t.start()
        return d, t

    d, t = run_daemon(Engine.load(checkpoint))
    first = EngineClient(d.socket_path).generate(PROMPT, SamplingParams(max_new_tokens=4))
    first.run()
    assert first.stats.reused_tokens == 0
    EngineClient(d.socket_path).generate(PROMPT + " more", SamplingParams(max_new_tokens=4)).run()  # shares a prefix
    d.stop()
    t.join(timeout=10)
    assert saved.is_file() and stat.S_IMODE(os.stat(saved).st_mode) == 0o600

    d, t = run_daemon(Engine.load(checkpoint))            # a new process would start like this
    again = EngineClient(d.socket_path).generate(PROMPT, SamplingParams(max_new_tokens=4))
    assert again.run() == first.text
    assert again.stats.reused_tokens == again.stats.prompt_tokens - 1   # no prefill from scratch
    d.stop()
    t.join(timeout=10)
    logged = [r.getMessage().split()[:2] for r in caplog.records if r.getMessage().startswith(("saved", "restored"))]
    assert logged[0][0] == "saved" and logged[1][0] == "restored"
    assert logged[0][1] == logged[1][1]   # the log counts a shared prefix once, as the cache does

    other = Engine.load(checkpoint, RuntimeConfig(dtype="bfloat16"))   # other weights or dtype: not restored
    assert other.load_cache(saved) == 0
