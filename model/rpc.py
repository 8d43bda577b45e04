"""The shared engine daemon and its client: one model in memory for every editor and terminal.

Wire format, over a Unix domain socket in the user's runtime directory (mode 0600, peers of
another user refused): each frame is a 4-byte big-endian length and a msgpack map, at most
MAX_FRAME bytes. A connection opens with a handshake, then carries requests by id:

    → {"type": "hello", "version": 1}              ← {"type": "hello", "version": 1, "info": {...}}
    → {"id": 7, "method": "generate", "params": {"prompt": ..., "max_new_tokens": ...}}
    ← {"id": 7, "chunk": "text"} …                  ← {"id": 7, "done": true, "stats": {...}}
    → {"id": 8, "method": "cancel", "params": {"target": 7}}
    → {"id": 9, "method": "tokenize" | "info" | "stats", "params": {...}}  ← {"id": 9, "result": ...}
    ← {"id": n, "error": "one sentence"}

A malformed or oversized frame gets an error reply and that connection is closed; the daemon
keeps serving the others. One computation at a time: the scheduler takes clients in turn and,
of each client's queued requests, the newest first.
"""
from __future__ import annotations

import argparse
import collections
import itertools
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import msgpack

from .protocol import CancelToken, Generation, GenerationStats

PROTOCOL_VERSION = 1
MAX_FRAME = 8 << 20
log = logging.getLogger("latent.engine")


class RPCError(Exception):
    """The daemon could not be reached or answered with an error; one sentence."""


# ---------------------------------------------------------------------------------------------
# where the socket lives

def runtime_dir() -> Path:
    base = os.environ.get("XDG_RUNTIME_DIR")
    folder = Path(base) / "latent" if base else Path.home() / ".cache" / "latent"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(folder, 0o700)
    return folder


def default_socket_path() -> Path:
    return runtime_dir() / "engine.sock"


# ---------------------------------------------------------------------------------------------
# framing

class FrameError(Exception):
    pass


def send_frame(sock: socket.socket, message: dict, lock: threading.Lock | None = None) -> None:
    data = msgpack.packb(message, use_bin_type=True)
    frame = struct.pack(">I", len(data)) + data
    if lock is None:
        sock.sendall(frame)
    else:
        with lock:
            sock.sendall(frame)


def recv_frame(sock: socket.socket, max_size: int = MAX_FRAME) -> dict | None:
    """One message, or None when the peer closed cleanly before a frame began."""
    header = _recv_exact(sock, 4, allow_eof=True)
    if header is None:
        return None
    (size,) = struct.unpack(">I", header)
    if size > max_size:
        raise FrameError(f"frame of {size} bytes exceeds the {max_size}-byte limit")
    body = _recv_exact(sock, size, allow_eof=False)
    try:
        message = msgpack.unpackb(body, raw=False, strict_map_key=False)
    except Exception as e:  # msgpack raises several unrelated types
        raise FrameError(f"frame is not valid msgpack ({type(e).__name__})") from None
    if not isinstance(message, dict):
        raise FrameError("frame is not a msgpack map")
    return message


def _recv_exact(sock: socket.socket, n: int, allow_eof: bool) -> bytes | None:
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(n - got)
        if not chunk:
            if allow_eof and got == 0:
                return None
            raise FrameError("connection closed in the middle of a frame")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


# ---------------------------------------------------------------------------------------------
# the daemon

class _Job:
    __slots__ = ("conn", "id", "params", "cancel")

    def __init__(self, conn: "_Connection", request_id: int, params: dict) -> None:
        self.conn, self.id, self.params, self.cancel = conn, request_id, params, CancelToken()


class _Connection:
    _ids = itertools.count(1)

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.lock, self.key = sock, threading.Lock(), next(self._ids)
        self.jobs: dict[int, _Job] = {}
        self.closed = False

    def send(self, message: dict) -> None:
        if self.closed:
            return
        try:
            send_frame(self.sock, message, self.lock)
        except OSError:
            self.closed = True


class EngineDaemon:
    """Serves one engine to many clients; see the module docstring for the protocol."""

    def __init__(self, engine, socket_path: Path, idle_exit_s: float | None = None,
                 persist: Path | None = None) -> None:
        self.engine = engine
        self.persist = Path(persist) if persist else None   # where the cache is kept across restarts
        self.socket_path = Path(socket_path)
        self.idle_exit_s = idle_exit_s
        self._queues: dict[int, collections.deque[_Job]] = collections.OrderedDict()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._last_activity = time.monotonic()
        self._connections: set[_Connection] = set()
        self._server: socket.socket | None = None
        self.http = None

    # -- lifecycle --------------------------------------------------------------------------
    def bind(self) -> None:
        path = self.socket_path
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if path.exists():
            if _socket_alive(path):
                raise RPCError(f"An engine daemon is already serving at {path}.")
            path.unlink()  # a stale socket left by a daemon that died
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            server.bind(str(path))
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        server.listen(16)
        server.settimeout(0.5)
        self._server = server

    def serve_forever(self) -> None:
        if self._server is None:
            self.bind()
        if self.persist is not None and self.persist.is_file():
            restored = self.engine.load_cache(self.persist)
            log.info("restored %d cached tokens from %s", restored, self.persist)
        worker = threading.Thread(target=self._work, name="latent-engine-worker", daemon=True)
        worker.start()
        log.info("engine daemon serving %s at %s", getattr(self.engine, "model_name", "?"), self.socket_path)
        try:
            while not self._stop.is_set():
                try:
                    sock, _ = self._server.accept()
                except socket.timeout:
                    self._maybe_idle_exit()
                    continue
                except OSError:
                    break
                threading.Thread(target=self._serve_connection, args=(sock,), daemon=True).start()
        finally:
            self.close()

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()

    def close(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.close()
            self._server = None
            if self.persist is not None:
                try:
                    saved = self.engine.save_cache(self.persist)
                    log.info("saved %d cached tokens to %s", saved, self.persist)
                except OSError as e:
                    log.warning("could not save the cache to %s: %s", self.persist, e)
        if self.http is not None:
            self.http.shutdown()
        try:
            if self.socket_path.exists():
                self.socket_path.unlink()
        except OSError:
            pass
        for conn in list(self._connections):
            _close_quietly(conn.sock)

    def _maybe_idle_exit(self) -> None:
        if self.idle_exit_s is None:
            return
        with self._cond:
            busy = any(self._queues.values()) or self._connections
        if not busy and time.monotonic() - self._last_activity > self.idle_exit_s:
            log.info("idle for %.0f s: exiting", self.idle_exit_s)
            self.stop()

    # -- one client -------------------------------------------------------------------------
    def _serve_connection(self, sock: socket.socket) -> None:
        if not _same_user(sock):
            _close_quietly(sock)
            return
        conn = _Connection(sock)
        self._connections.add(conn)
        try:
            hello = recv_frame(sock)
            if not hello or hello.get("type") != "hello":
                conn.send({"error": "the first frame must be a hello handshake"})
                return
            if hello.get("version") != PROTOCOL_VERSION:
                conn.send({"error": f"protocol version {hello.get('version')!r} is not supported; "
                                    f"this daemon speaks version {PROTOCOL_VERSION}"})
                return
            conn.send({"type": "hello", "version": PROTOCOL_VERSION, "info": self._info()})
            while not self._stop.is_set():
                message = recv_frame(sock)
                if message is None:
                    return
                self._touch()
                self._dispatch(conn, message)
        except FrameError as e:
            conn.send({"error": f"Malformed frame: {e}; closing this connection."})
        except OSError:
            pass
        finally:
            conn.closed = True
            for job in list(conn.jobs.values()):
                job.cancel.cancel()
            self._connections.discard(conn)
            with self._cond:
                self._queues.pop(conn.key, None)
            _close_quietly(sock)
            self._touch()

    def _dispatch(self, conn: _Connection, message: dict) -> None:
        request_id, method = message.get("id"), message.get("method")
        params = message.get("params") or {}
        if not isinstance(request_id, int) or not isinstance(params, dict):
            conn.send({"id": request_id, "error": "A request needs an integer id and a params map."})
            return
        if method == "generate":
            job = _Job(conn, request_id, params)
            conn.jobs[request_id] = job
            with self._cond:
                self._queues.setdefault(conn.key, collections.deque()).append(job)
                self._cond.notify()
        elif method == "cancel":
            job = conn.jobs.get(params.get("target"))
            if job is not None:
                job.cancel.cancel()
            conn.send({"id": request_id, "result": job is not None})
        elif method == "tokenize":
            text = params.get("text", "")
            conn.send({"id": request_id, "result": self.engine.tokenizer.encode(str(text))})
        elif method == "info":
            conn.send({"id": request_id, "result": self._info()})
        elif method == "stats":
            conn.send({"id": request_id, "result": _plain(self.engine.stats())})
        elif method == "shutdown":
            conn.send({"id": request_id, "result": True})
            self.stop()
        else:
            conn.send({"id": request_id, "error": f"Unknown method {method!r}."})

    def _info(self) -> dict:
        e = self.engine
        return {
            "model": getattr(e, "model_name", "?"),
            "model_dir": str(getattr(e, "model_dir", "") or ""),
            "fim_format": e.fim_format,
            "pid": os.getpid(),
            "version": PROTOCOL_VERSION,
        }

    def _touch(self) -> None:
        self._last_activity = time.monotonic()

    # -- the one computation ----------------------------------------------------------------
    def _next_job(self) -> _Job | None:
        """Clients in turn; of one client's queue, its newest request first."""
        with self._cond:
            while not self._stop.is_set():
                for key in list(self._queues):
                    queue = self._queues[key]
                    if queue:
                        job = queue.pop()
                        self._queues.move_to_end(key)
                        return job
                self._cond.wait(timeout=0.5)
        return None

    def _work(self) -> None:
        while (job := self._next_job()) is not None:
            self._run(job)

    def _run(self, job: _Job) -> None:
        conn, p = job.conn, job.params
        try:
            if conn.closed or job.cancel.cancelled:
                conn.send({"id": job.id, "done": True, "stats": {"finish_reason": "cancelled"}})
                return
            gen = self.engine.generate(
                p.get("prompt", ""),
                max_new_tokens=int(p.get("max_new_tokens", 64)),
                stop=list(p.get("stop") or ()),
                stop_token_ids=list(p.get("stop_token_ids") or ()),
                temperature=float(p.get("temperature", 0.0)),
                top_p=float(p.get("top_p", 1.0)),
                top_k=int(p.get("top_k", 0)),
                seed=p.get("seed"),
                cancel=job.cancel,
            )
            for piece in gen:  # figures travel with every piece: a client may stop reading early
                conn.send({"id": job.id, "chunk": piece, "stats": _plain(gen.stats.as_dict())})
            conn.send({"id": job.id, "done": True, "stats": _plain(gen.stats.as_dict())})
        except Exception as e:  # the daemon outlives any one request
            log.exception("request %s failed", job.id)
            conn.send({"id": job.id, "error": _sentence(e)})
        finally:
            conn.jobs.pop(job.id, None)
            self._touch()


def _same_user(sock: socket.socket) -> bool:
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
    except (OSError, AttributeError):
        return True  # platforms without SO_PEERCRED rely on the socket's 0600 mode
    return uid == os.getuid()


def _socket_alive(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(0.5)
    try:
        probe.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        probe.close()


def _close_quietly(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass


def _plain(value: Any) -> Any:
    """msgpack-safe copy (tuples to lists, unknown objects to strings)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return value
    return str(value)


def _sentence(e: Exception) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text if text.endswith(".") else text + "."


# ---------------------------------------------------------------------------------------------
# the client

class EngineClient:
    """The engine protocol over the daemon's socket.

    The tokenizer is loaded locally from the daemon's model folder (same machine), so prompt
    budgets cost no round trip. If the daemon dies mid-request the client reconnects —
    restarting the daemon when it was allowed to start it — and retries the request once.
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
        from .tokenizer import Tokenizer

        model_dir = self.info.get("model_dir")
        self.tokenizer = Tokenizer.from_dir(model_dir) if model_dir else None
        self.model_name = f"{self.info.get('model', '?')} (daemon)"

    @property
    def fim_format(self) -> str | None:
        return self.info.get("fim_format")

    # -- connection -------------------------------------------------------------------------
    def _connect(self) -> None:
        deadline = time.monotonic() + self.connect_timeout
        started = False
        while True:
            try:
                self._sock = self._open()
                return
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

    def close(self) -> None:
        if self._sock is not None:
            _close_quietly(self._sock)
            self._sock = None

    # -- calls ------------------------------------------------------------------------------
    def call(self, method: str, **params) -> Any:
        with self._lock:
            for attempt in (0, 1):
                try:
                    request_id = next(self._ids)
                    send_frame(self._sock, {"id": request_id, "method": method, "params": params})
                    while True:
                        reply = recv_frame(self._sock)
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

    def _reconnect(self) -> None:
        self.close()
        self._connect()

    def tokenize(self, text: str) -> list[int]:
        return self.call("tokenize", text=text)

    def stats(self) -> dict:
        return {**self.call("stats"), "engine": "daemon", "socket": str(self.socket_path)}

    def generate(self, prompt: str | Sequence[int], *, max_new_tokens: int = 64, stop: Sequence[str] = (),
                 stop_token_ids: Sequence[int] = (), temperature: float = 0.0, top_p: float = 1.0,
                 top_k: int = 0, seed: int | None = None, cancel: CancelToken | None = None) -> Generation:
        params = dict(prompt=prompt if isinstance(prompt, str) else [int(t) for t in prompt],
                      max_new_tokens=max_new_tokens, stop=list(stop), stop_token_ids=list(stop_token_ids),
                      temperature=temperature, top_p=top_p, top_k=top_k, seed=seed)
        stats = GenerationStats()
        return Generation(self._stream(params, stats, cancel or CancelToken()), stats)

    def _stream(self, params: dict, stats: GenerationStats, cancel: CancelToken) -> Iterator[str]:
        with self._lock:
            for attempt in (0, 1):
                sent_any = False
                try:
                    for piece in self._stream_once(params, stats, cancel):
                        sent_any = True
                        yield piece
                    return
                except (OSError, FrameError):
                    if attempt or sent_any:
                        stats.finish_reason = "error"
                        raise RPCError("The engine daemon went away during a completion.") from None
                    self._reconnect()

    def _stream_once(self, params: dict, stats: GenerationStats, cancel: CancelToken) -> Iterator[str]:
        request_id = next(self._ids)
        sock = self._sock
        send_frame(sock, {"id": request_id, "method": "generate", "params": params})
        sock.settimeout(0.05)
        cancel_sent = False
        finished = False
        try:
            while True:
                if cancel.cancelled and not cancel_sent:
                    send_frame(sock, {"id": next(self._ids), "method": "cancel", "params": {"target": request_id}})
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
                    send_frame(sock, {"id": next(self._ids), "method": "cancel", "params": {"target": request_id}})
                except OSError:
                    pass
            sock.settimeout(30)


def start_daemon(argv: list[str]) -> subprocess.Popen:
    """Start a daemon detached from this process (its own session, output to a log file)."""
    log_path = runtime_dir() / "engine.log"
    with open(log_path, "ab") as out:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                start_new_session=True, close_fds=True)


def daemon_argv(model: str | None = None, socket_path: Path | None = None, **options) -> list[str]:
    argv = [sys.executable, "-m", "model.rpc", "serve"]
    if model:
        argv += ["--model", str(model)]
    if socket_path:
        argv += ["--socket", str(socket_path)]
    for key, value in options.items():
        if value is not None:
            argv += [f"--{key.replace('_', '-')}", str(value)]
    return argv


# ---------------------------------------------------------------------------------------------
# command line: python -m model.rpc serve | stop | status   (also `latent engine …`)

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="latent engine", description="The shared engine daemon.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="load the model and serve it on a Unix socket")
    serve.add_argument("--model", default=None, help="checkpoint folder or cached repo id (default: bundled)")
    serve.add_argument("--socket", type=Path, default=None, help="socket path (default: $XDG_RUNTIME_DIR/latent/engine.sock)")
    serve.add_argument("--device", default="cpu")
    serve.add_argument("--dtype", default="float32")
    serve.add_argument("--quantize", default=None, choices=[None, "int8"])
    serve.add_argument("--threads", type=int, default=None)
    serve.add_argument("--cache-mb", type=int, default=1024)
    serve.add_argument("--max-context", type=int, default=4096)
    serve.add_argument("--reuse", default="exact", choices=["exact", "shift"],
                       help="latent reuse: exact prefixes, or also moved suffixes (approximate)")
    serve.add_argument("--idle-exit", type=float, default=None, help="exit after this many idle seconds")
    serve.add_argument("--persist", type=Path, default=None,
                       help="keep the hottest cache entries in this file across restarts "
                            "(default: cache.msgpack beside the socket; 'none' to disable)")
    serve.add_argument("--http", default=None, metavar="HOST:PORT",
                       help="also serve OpenAI-compatible /v1/completions on this loopback address")
    for name in ("stop", "status"):
        p = sub.add_parser(name, help=f"{name} the daemon")
        p.add_argument("--socket", type=Path, default=None)
    args = parser.parse_args(argv)
    socket_path = args.socket or default_socket_path()
    try:
        if args.command == "serve":
            return _serve(args, socket_path)
        client = EngineClient(socket_path)
        if args.command == "status":
            stats = client.stats()
            print(f"serving {stats.get('model')} (pid {client.info.get('pid')}) at {socket_path}; "
                  f"{stats.get('requests', 0)} requests, {stats.get('cache_tokens', 0)} cached tokens")
        else:
            client.call("shutdown")
            print(f"stopped the daemon at {socket_path}")
        return 0
    except (RPCError, OSError) as e:
        print(f"latent engine: {_sentence(e)}", file=sys.stderr)
        return 2


def _serve(args, socket_path: Path) -> int:
    from .engine import Engine
    from .loader import ModelLoadError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        engine = Engine.load(args.model, device=args.device, dtype=args.dtype, quantize=args.quantize,
                             threads=args.threads, cache_bytes=args.cache_mb << 20, max_context=args.max_context,
                             reuse=args.reuse)
    except ModelLoadError as e:
        print(f"latent engine: {e}", file=sys.stderr)
        return 2
    persist = None if str(args.persist).lower() == "none" else (args.persist or socket_path.with_name("cache.msgpack"))
    daemon = EngineDaemon(engine, socket_path, idle_exit_s=args.idle_exit, persist=persist)
    daemon.bind()
    signal.signal(signal.SIGTERM, lambda *_: daemon.stop())   # `kill` saves the cache too
    if args.http:
        from .openai_http import serve_http

        host, _, port = args.http.rpartition(":")
        daemon.http = serve_http(engine, host or "127.0.0.1", int(port))
    daemon.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
