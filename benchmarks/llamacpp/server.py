"""A llama-server process for the benchmark: started on a free localhost port with the flags
of docs/benchmarks.md, asked `/completion` (greedy) over one keep-alive HTTP connection."""
from __future__ import annotations

import http.client
import json
import socket
import subprocess
import time
from pathlib import Path


class LlamaServer:
    """One llama-server process on a free localhost port, asked over a keep-alive connection."""

    def __init__(self, binary: Path, gguf: Path, threads: int, log: Path, extra: tuple[str, ...] = ()) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        args = [str(binary), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(self.port), "-c", "4096",
                "-np", "1", "-t", str(threads), "-tb", str(threads), "-ctk", "f32", "-ctv", "f32", *extra]
        self.log = log.open("w")
        self.process = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"llama-server exited with {self.process.returncode}; see {self.log.name}")
            try:
                self.conn.request("GET", "/health")
                response = self.conn.getresponse()
                response.read()
                if response.status == 200:
                    return
            except OSError:
                self.conn.close()
            time.sleep(0.5)
        raise RuntimeError(f"llama-server was not ready after {timeout:.0f} s; see {self.log.name}")

    def post(self, path: str, body: dict) -> dict:
        """POST JSON; once more on a fresh connection if the server closed an idle one (after 5 s)."""
        for attempt in (1, 2):
            try:
                self.conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
                response = self.conn.getresponse()
                break
            except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
                self.conn.close()
                if attempt == 2:
                    raise
        data = json.loads(response.read())
        if response.status != 200:
            raise RuntimeError(f"llama-server {path}: {response.status} {data}")
        return data

    def complete(self, prompt: str, n_predict: int, **extra) -> dict:
        """Greedy /completion; the generated token ids come back under "tokens"."""
        body = {"prompt": prompt, "n_predict": n_predict, "temperature": 0.0, "cache_prompt": True,
                "return_tokens": True, **extra}
        return self.post("/completion", body)

    def greedy_picks(self, ids: list[int]) -> list[int]:
        """Teacher-forced greedy picks: for each prefix ids[:i] (i = 1 … len), the token the
        server would write next — one request per position, each reusing the cached prefix, so
        each prefills one token. An end-of-generation pick comes back as no token: -1."""
        picks = []
        for i in range(1, len(ids) + 1):
            tokens = self.complete(ids[:i], 1)["tokens"]
            picks.append(tokens[0] if tokens else -1)
        return picks

    def close(self) -> None:
        self.conn.close()
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()
