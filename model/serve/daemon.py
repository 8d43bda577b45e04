"""The shared engine daemon: one engine served to many clients over a Unix socket.

The wire is described in framing.py. The socket is created with mode 0600 and peers of
another user are refused. A malformed or oversized frame gets an error reply and closes that
connection; the daemon keeps serving the others. Quick calls (cancel, tokenize, info, stats,
clear_cache) are answered on the connection's own thread; generations run one at a time on a
worker thread, in the order the FairScheduler hands them out. At exit the daemon saves the
hottest cache entries to its `persist` file, and restores them at its next start.
"""
from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import os
import socket
import struct
import threading
import time
from pathlib import Path

from model.params import OptionError, SamplingParams
from model.protocol import CancelToken

from .framing import (PROTOCOL_VERSION, FrameError, RPCError, close_quietly, plain, recv_frame, send_frame,
                      sentence)

log = logging.getLogger("latent.engine")
SAMPLING_FIELDS = frozenset(f.name for f in dataclasses.fields(SamplingParams))


class Job:
    """One generate request: where to answer, what to generate, and its cancel token."""

    __slots__ = ("conn", "id", "prompt", "params", "cancel")

    def __init__(self, conn: "Connection", request_id: int, prompt: str | list[int], params: SamplingParams) -> None:
        self.conn, self.id, self.prompt, self.params = conn, request_id, prompt, params
        self.cancel = CancelToken()


class Connection:
    """One client's socket, its send lock and its requests in flight."""

    _keys = itertools.count(1)

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.lock, self.key = sock, threading.Lock(), next(self._keys)
        self.jobs: dict[int, Job] = {}
        self.closed = False

    def send(self, message: dict) -> None:
        if self.closed:
            return
        try:
            send_frame(self.sock, message, self.lock)
        except OSError:
            self.closed = True


class FairScheduler:
    """Queued generations of many clients, handed out one at a time: clients in turn and, of
    one client's queue, its newest request first (the older ones are likely superseded)."""

    def __init__(self) -> None:
        self._queues: collections.OrderedDict[int, collections.deque[Job]] = collections.OrderedDict()
        self._cond = threading.Condition()
        self._closed = False

    def put(self, client: int, job: Job) -> None:
        with self._cond:
            self._queues.setdefault(client, collections.deque()).append(job)
            self._cond.notify()

    def forget(self, client: int) -> None:
        """Drop a client that went away, with whatever it still had queued."""
        with self._cond:
            self._queues.pop(client, None)

    @property
    def pending(self) -> bool:
        with self._cond:
            return any(self._queues.values())

    def take(self) -> Job | None:
        """The next job; waits for one, and returns None once the scheduler is closed."""
        with self._cond:
            while not self._closed:
                for client, queue in self._queues.items():
                    if queue:
                        self._queues.move_to_end(client)   # then the other clients' turn
                        return queue.pop()
                self._cond.wait(timeout=0.5)
        return None

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class EngineDaemon:
    """Serves one engine to many clients; see framing.py for the wire."""

    def __init__(self, engine, socket_path: Path, idle_exit_s: float | None = None,
                 persist: Path | None = None) -> None:
        self.engine = engine
        self.socket_path = Path(socket_path)
        self.idle_exit_s = idle_exit_s
        self.persist = Path(persist) if persist else None   # where the cache is kept across restarts
        self.http = None                                      # the OpenAI face, when one is served
        self._scheduler = FairScheduler()
        self._stop = threading.Event()
        self._last_activity = time.monotonic()
        self._connections: set[Connection] = set()
        self._server: socket.socket | None = None
        self._calls = {"cancel": self._cancel, "tokenize": self._tokenize, "info": lambda conn, p: self._info(),
                       "stats": lambda conn, p: self.engine.stats(), "clear_cache": self._clear_cache,
                       "shutdown": self._shutdown}

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
        threading.Thread(target=self._work, name="latent-engine-worker", daemon=True).start()
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
        self._scheduler.close()

    def close(self) -> None:
        self.stop()
        if self._server is not None:
            self._server.close()
            self._server = None
            self._save_cache()
        if self.http is not None:
            self.http.shutdown()
        try:
            self.socket_path.unlink(missing_ok=True)
        except OSError:
            pass
        for conn in list(self._connections):
            close_quietly(conn.sock)

    def _save_cache(self) -> None:
        if self.persist is None:
            return
        try:
            saved = self.engine.save_cache(self.persist)
            log.info("saved %d cached tokens to %s", saved, self.persist)
        except OSError as e:
            log.warning("could not save the cache to %s: %s", self.persist, e)

    def _maybe_idle_exit(self) -> None:
        if self.idle_exit_s is None or self._scheduler.pending or self._connections:
            return
        if time.monotonic() - self._last_activity > self.idle_exit_s:
            log.info("idle for %.0f s: exiting", self.idle_exit_s)
            self.stop()

    def _touch(self) -> None:
        self._last_activity = time.monotonic()

    # -- one client -------------------------------------------------------------------------
    def _serve_connection(self, sock: socket.socket) -> None:
        if not _same_user(sock):
            close_quietly(sock)
            return
        conn = Connection(sock)
        self._connections.add(conn)
        try:
            if not self._handshake(conn):
                return
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
            self._scheduler.forget(conn.key)
            close_quietly(sock)
            self._touch()

    def _handshake(self, conn: Connection) -> bool:
        hello = recv_frame(conn.sock)
        if not hello or hello.get("type") != "hello":
            conn.send({"error": "the first frame must be a hello handshake"})
            return False
        if hello.get("version") != PROTOCOL_VERSION:
            conn.send({"error": f"protocol version {hello.get('version')!r} is not supported; "
                                f"this daemon speaks version {PROTOCOL_VERSION}"})
            return False
        conn.send({"type": "hello", "version": PROTOCOL_VERSION, "info": self._info()})
        return True

    def _dispatch(self, conn: Connection, message: dict) -> None:
        request_id, method = message.get("id"), message.get("method")
        params = message.get("params") or {}
        if not isinstance(request_id, int) or not isinstance(params, dict):
            conn.send({"id": request_id, "error": "A request needs an integer id and a params map."})
            return
        if method == "generate":
            self._enqueue(conn, request_id, params)
            return
        call = self._calls.get(method)
        if call is None:
            conn.send({"id": request_id, "error": f"Unknown method {method!r}."})
            return
        try:
            result = call(conn, params)
        except Exception as e:  # the daemon outlives any one request
            log.exception("%s request %s failed", method, request_id)
            conn.send({"id": request_id, "error": sentence(e)})
            return
        conn.send({"id": request_id, "result": plain(result)})

    def _enqueue(self, conn: Connection, request_id: int, params: dict) -> None:
        """Check a generate request's fields and queue it; a bad one is answered at once."""
        prompt = params.pop("prompt", "")
        try:
            if not (isinstance(prompt, str) or isinstance(prompt, list) and all(type(t) is int for t in prompt)):
                raise ValueError("The prompt must be text or a list of token ids.")
            unknown = sorted(set(params) - SAMPLING_FIELDS)
            if unknown:
                raise ValueError(f"Unknown sampling field {unknown[0]!r}.")
            sampling = SamplingParams(**params)
        except (OptionError, TypeError, ValueError) as e:
            conn.send({"id": request_id, "error": sentence(e)})
            return
        job = Job(conn, request_id, prompt, sampling)
        conn.jobs[request_id] = job
        self._scheduler.put(conn.key, job)

    # -- quick calls ------------------------------------------------------------------------
    def _cancel(self, conn: Connection, params: dict) -> bool:
        job = conn.jobs.get(params.get("target"))
        if job is not None:
            job.cancel.cancel()
        return job is not None

    def _tokenize(self, conn: Connection, params: dict) -> list[int]:
        return self.engine.tokenizer.encode(str(params.get("text", "")))

    def _clear_cache(self, conn: Connection, params: dict) -> bool:
        self.engine.clear_cache()   # waits for a generation in progress, then empties the cache
        return True

    def _shutdown(self, conn: Connection, params: dict) -> bool:
        self.stop()
        return True

    def _info(self) -> dict:
        e = self.engine
        return {
            "model": getattr(e, "model_name", "?"),
            "model_dir": str(getattr(e, "model_dir", "") or ""),
            "fim_format": e.fim_format,
            "fim_layouts": list(e.fim_layouts),
            "languages": list(e.languages),
            "pid": os.getpid(),
            "version": PROTOCOL_VERSION,
        }

    # -- the one computation ----------------------------------------------------------------
    def _work(self) -> None:
        while (job := self._scheduler.take()) is not None:
            self._run(job)

    def _run(self, job: Job) -> None:
        conn = job.conn
        try:
            if conn.closed or job.cancel.cancelled:
                conn.send({"id": job.id, "done": True, "stats": {"finish_reason": "cancelled"}})
                return
            gen = self.engine.generate(job.prompt, job.params, cancel=job.cancel)
            for piece in gen:  # figures travel with every piece: a client may stop reading early
                conn.send({"id": job.id, "chunk": piece, "stats": plain(gen.stats.as_dict())})
            conn.send({"id": job.id, "done": True, "stats": plain(gen.stats.as_dict())})
        except Exception as e:  # the daemon outlives any one request
            log.exception("request %s failed", job.id)
            conn.send({"id": job.id, "error": sentence(e)})
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
