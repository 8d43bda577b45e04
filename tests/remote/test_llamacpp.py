"""The remote backend against llama.cpp's OpenAI-compatible server (`make test-remote`).

Not part of `make test`: setup_llamacpp.sh builds llama.cpp (~12 minutes) and converts the
bundled model to GGUF. The server then serves the same weights our engine runs, and the
remote backend's completions are compared with our engine's.
"""
from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from model.engine import Engine
from model.params import SamplingParams
from model.protocol import CancelToken
from model.serve.remote import RemoteEngine

ROOT = Path(__file__).resolve().parents[2]
REMOTE = ROOT / ".remote"
GGUF = REMOTE / "bundled-f32.gguf"

PROMPTS = [
    "def add(a, b):\n    ",
    "import os\n\n\ndef list_python_files(folder):\n    ",
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n        ",
]
SUFFIX = "\n"


@pytest.fixture(scope="module")
def server():
    assert GGUF.is_file(), "run tests/remote/setup_llamacpp.sh first (make test-remote does)"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [str(REMOTE / "venv" / "bin" / "python"), "-m", "llama_cpp.server", "--model", str(GGUF),
         "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--n_threads", "2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(f"{url}/v1/models", timeout=2).read()
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.fail(f"llama.cpp's server did not start: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.5)
    yield url
    proc.terminate()
    proc.wait(timeout=20)


def test_remote_backend_completes_like_our_engine(server):
    ours = Engine.load()
    remote = RemoteEngine(server, tokenizer_dir=str(ROOT / "model" / "bundled"))
    assert remote.fim_format == "deepseek"
    agree = 0
    for prefix in PROMPTS:
        prompt = ours.tokenizer.fim.fill(prefix, SUFFIX)
        params = SamplingParams(max_new_tokens=12, stop=("\n",))
        want = ours.generate(prompt, params).run()
        gen = remote.generate(prompt, params)
        got = gen.run()
        assert gen.stats.finish_reason in ("stop", "length")
        agree += got == want
        print(f"{prefix!r}: ours {want!r}, llama.cpp {got!r}")
    # same weights, f32 GGUF; llama.cpp's f16 KV cache may flip an MoE routing decision
    assert agree >= len(PROMPTS) - 1


def test_remote_streams_and_cancels(server):
    remote = RemoteEngine(server)            # no tokenizer folder: budgets are estimated
    token = CancelToken()
    gen = remote.generate("def main():\n", SamplingParams(max_new_tokens=200, temperature=0.8, seed=1), cancel=token)
    pieces = []
    for piece in gen:
        pieces.append(piece)
        token.cancel()
    assert pieces and gen.stats.finish_reason == "cancelled"
    models = json.loads(urllib.request.urlopen(f"{server}/v1/models", timeout=5).read())
    assert models["data"]
