"""The engine protocol over the daemon's socket, and starting a daemon.

What a language server attached to the daemon imports: no torch, no daemon code. The
tokenizer is loaded locally from the daemon's model folder (same machine), so prompt budgets
cost no round trip.
"""
from __future__ import annotations

import itertools
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

from model import options
from model.params import RuntimeConfig, SamplingParams
from model.protocol import CancelToken, Generation, GenerationStats

from .framing import (
    PROTOCOL_VERSION,
    FrameError,
    RPCError,
    check_socket_path,
    close_quietly,
    default_socket_path,
    recv_frame,
    runtime_dir,
    send_frame,
)

__all__ = ["EngineClient", "RPCError", "daemon_argv", "start_daemon"]


class EngineClient:
    """The engine protocol over the daemon's socket.

    If the daemon dies mid-request the client reconnects — restarting the daemon when it was
    allowed to start it — and retries the request once.
    """

    def __init__(self, socket_path: Path | None = None, *, spawn: list[str] | None = None,
                 connect_timeout: float = 60.0) -> None:
        self.socket_path = Path(socket_path) if socket_path else default_socket_path()
        self.spawn = spawn                 # argv that starts a daemon, or None: never start one
        self.connect_timeout = connect_timeout
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()      # one request on the wire at a time per client
        self._ids = itertools.count(1)
        self.info: dict = {}
        self._connect()
        from model.tokenizer import Tokenizer

        from .remote import ApproxTokenizer

        model_dir = self.info.get("model_dir")   # the daemon's own tokenizer, read here, for exact budgets
        self.tokenizer = (Tokenizer.from_dir(model_dir) if model_dir
                          else ApproxTokenizer(self.info.get("fim_format") or "plain"))   # else an estimate
        self.model_name = f"{self.info.get('model', '?')} (daemon)"

    @property
    def fim_format(self) -> str | None:
        return self.info.get("fim_format")

    @property
    def fim_layouts(self) -> tuple[str, ...]:
        return tuple(self.info.get("fim_layouts") or ())

    @property
    def languages(self) -> tuple[str, ...]:
        return tuple(self.info.get("languages") or ())

    @property
    def context_length(self) -> int | None:
        return self.info.get("context_length")

    # -- connection -------------------------------------------------------------------------
    def _connect(self) -> socket.socket:
        check_socket_path(self.socket_path)   # too long a path: say so, rather than wait for a daemon
        deadline = time.monotonic() + self.connect_timeout
        started = False
        while True:
            try:
                self._sock = sock = self._open()
                return sock
            except (OSError, RPCError) as e:
                error = e
            if self.spawn is None:
                raise RPCError(f"No engine daemon answers at {self.socket_path} ({error}).")
            if not started:
                start_daemon(self.spawn)
                started = True
            if time.monotonic() > deadline:
                raise RPCError(f"The engine daemon did not start within {self.connect_timeout:.0f} s.")
            time.sleep(0.2)

    def _open(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(self.socket_path))
        sock.settimeout(30)
        send_frame(sock, {"type": "hello", "version": PROTOCOL_VERSION})
        reply = recv_frame(sock)
        if not reply or reply.get("type") != "hello":
            sock.close()
            raise RPCError((reply or {}).get("error", "the daemon refused the handshake"))
        self.info = reply.get("info", {})
        return sock

    def _reconnect(self) -> None:
        self.close()
        self._connect()

    def _connected(self) -> socket.socket:
        """The socket to the daemon; connected again if the client was closed (or a reconnect
        failed)."""
        return self._sock if self._sock is not None else self._connect()

    def close(self) -> None:
        if self._sock is not None:
            close_quietly(self._sock)
            self._sock = None

    # -- the protocol -----------------------------------------------------------------------
    def generate(self, prompt: str | Sequence[int], params: SamplingParams = SamplingParams(), *,
                 cancel: CancelToken | None = None) -> Generation:
        wire = {"prompt": prompt if isinstance(prompt, str) else [int(t) for t in prompt], **params.as_dict()}
        stats = GenerationStats()
        return Generation(self._stream(wire, stats, cancel or CancelToken()), stats)

    def clear_cache(self) -> None:
        """Empty the daemon's latent cache (every client of the daemon shares it)."""
        self.call("clear_cache")

    def tokenize(self, text: str) -> list[int]:
        return self.call("tokenize", text=text)

    def stats(self) -> dict:
        return {**self.call("stats"), "engine": "daemon", "socket": str(self.socket_path)}

    def call(self, method: str, **params) -> Any:
        """A request answered with one result (not `generate`); RPCError for an error reply."""
        with self._lock:
            for attempt in (0, 1):
                try:
                    request_id = next(self._ids)
                    sock = self._connected()
                    send_frame(sock, {"id": request_id, "method": method, "params": params})
                    while True:
                        reply = recv_frame(sock)
                        if reply is None:
                            raise OSError("the daemon closed the connection")
                        if reply.get("id") == request_id:
                            if "error" in reply:
                                raise RPCError(reply["error"])
                            return reply.get("result")
                except (OSError, FrameError):
                    if attempt:
                        raise RPCError("The engine daemon went away twice during one request.") from None
                    self._reconnect()

    # -- streaming --------------------------------------------------------------------------
    def _stream(self, wire: dict, stats: GenerationStats, cancel: CancelToken) -> Iterator[str]:
        with self._lock:
            for attempt in (0, 1):
                sent_any = False
                try:
                    for piece in self._stream_once(wire, stats, cancel):
                        sent_any = True
                        yield piece
                    return
                except (OSError, FrameError):
                    if attempt or sent_any:
                        stats.finish_reason = "error"
                        raise RPCError("The engine daemon went away during a completion.") from None
                    self._reconnect()

    def _stream_once(self, wire: dict, stats: GenerationStats, cancel: CancelToken) -> Iterator[str]:
        request_id = next(self._ids)
        sock = self._connected()
        send_frame(sock, {"id": request_id, "method": "generate", "params": wire})
        sock.settimeout(0.05)
        cancel_sent = finished = False
        try:
            while True:
                if cancel.cancelled and not cancel_sent:
                    self._send_cancel(sock, request_id)
                    cancel_sent = True
                try:
                    reply = recv_frame(sock)
                except socket.timeout:
                    continue
                if reply is None:
                    raise OSError("the daemon closed the connection")
                if reply.get("id") != request_id:
                    continue  # the answer to our cancel
                if "error" in reply:
                    stats.finish_reason = "error"
                    raise RPCError(reply["error"])
                for key, value in (reply.get("stats") or {}).items():
                    if hasattr(stats, key):
                        setattr(stats, key, value)
                if reply.get("done"):
                    finished = True
                    return
                if "chunk" in reply:
                    yield reply["chunk"]
        finally:
            if not finished and not cancel_sent:  # the consumer stopped early: free the daemon
                try:
                    self._send_cancel(sock, request_id)
                except OSError:
                    pass
            sock.settimeout(30)

    def _send_cancel(self, sock: socket.socket, target: int) -> None:
        send_frame(sock, {"id": next(self._ids), "method": "cancel", "params": {"target": target}})


def start_daemon(argv: list[str]) -> subprocess.Popen:
    """Start a daemon detached from this process (its own session, output to a log file)."""
    log_path = runtime_dir() / "engine.log"
    with open(log_path, "ab") as out:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                start_new_session=True, close_fds=True)


def daemon_argv(model: str | None, runtime: RuntimeConfig, *, socket_path: Path | None = None,
                idle_exit: float | None = None, persist: Path | str | None = None) -> list[str]:
    """The command line of `latent engine serve` for this model and runtime.

    idle_exit: seconds without clients before the daemon exits (None: never); persist: the
    cache file (None: the default beside the socket; "none": no file)."""
    argv = [sys.executable, "-m", "model.serve", "serve"]
    if model:
        argv += ["--model", str(model)]
    if socket_path:
        argv += ["--socket", str(socket_path)]
    if idle_exit is not None:
        argv += ["--idle-exit", str(idle_exit)]
    if persist is not None:
        argv += ["--persist", str(persist)]
    return argv + options.to_argv(runtime)
