"""An OpenAI-compatible HTTP face for the daemon: `POST /v1/completions`, `GET /v1/models`.

Served by `latent engine serve --http 127.0.0.1:PORT` (or `[::1]:PORT`), on loopback only,
so any client of the OpenAI completions API (streaming or not) can use Latent's engine and
its latent reuse. The request format is openai_api.py's. What guards it:

- every request carries `Authorization: Bearer KEY` (keys.py), else 401 — checked by the gate
  (http_gate.py), which reads every request's header block on one thread: at most MAX_HEADER
  bytes (431) arriving within IDLE_TIMEOUT seconds in all, from the connection or its previous
  reply (else it closes); so clients without the key never hold a handler thread;
- at most MAX_REQUESTS requests with the key are served at once, each on a handler thread
  (beyond, 503 and closed); bodies of at most MAX_BODY (413); IDLE_TIMEOUT seconds for each
  read and write of a request; a kept-alive connection goes back to the gate between requests;
- a completion is a job of the daemon's fair scheduler, and all the face's requests are one
  party of it (they carry its one key), so HTTP takes turns with each socket client as one
  client, however many connections it opens; a completion is cancelled when its HTTP client
  hangs up.
"""
from __future__ import annotations

import io
import itertools
import json
import logging
import queue
import select
import socket
import socketserver
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Iterator

from . import keys
from .http_gate import Gate, answer, shut
from .openai_api import (
    BadRequest,
    body_length,
    chunk_body,
    completion_body,
    completion_id,
    error_body,
    finish,
    parse_completion_request,
    parse_json,
)
from .scheduler import Client, Job, Refused

if TYPE_CHECKING:
    from .daemon import EngineDaemon

log = logging.getLogger("latent.engine")
LOOPBACK = ("127.0.0.1", "localhost", "::1")   # the only hosts the face binds to
MAX_REQUESTS = 32          # requests with the key served at once
IDLE_TIMEOUT = 10.0        # seconds for a header block in all, and for each read or write after it
POLL = 0.1                 # seconds between checks that a waiting client is still there


class HttpClient(Client):
    """One HTTP request as a client of the daemon: the worker's replies wait in a queue for
    the request's handler thread."""

    def __init__(self, party) -> None:
        super().__init__(party)
        self.replies: queue.SimpleQueue[dict] = queue.SimpleQueue()

    def send(self, message: dict) -> None:
        if not self.closed:
            self.replies.put(message)


class FaceServer(socketserver.TCPServer):
    """The listening face: bound at construction (so a bad address fails before the model
    loads), serving once start() hands it the daemon and the key."""

    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, host: str, port: int, *, max_requests: int = MAX_REQUESTS,
                 idle_timeout: float = IDLE_TIMEOUT) -> None:
        if host not in LOOPBACK:
            raise ValueError(f"The HTTP face binds to loopback only, not {host!r}.")
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.max_requests, self.idle_timeout = max_requests, idle_timeout
        self.api_key = ""
        self._daemon: EngineDaemon | None = None
        self._slots = threading.BoundedSemaphore(max_requests)
        self._gate: Gate | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        # TCPServer only binds and listens here: the gate reads each request's header block
        # and _dispatch runs Handler itself, so TCPServer's own request loop never runs.
        super().__init__((host, port), socketserver.BaseRequestHandler)

    @property
    def address(self) -> str:
        """host:port as bound (the real port when 0 was asked for)."""
        host, port = self.server_address[:2]
        assert isinstance(host, str), "an IP socket's address names its host as text"
        return keys.address(host, port)

    @property
    def engine_daemon(self) -> EngineDaemon:
        """The daemon served; no request is served before start() hands it over."""
        if self._daemon is None:
            raise RuntimeError("The HTTP face serves no daemon before start().")
        return self._daemon

    def start(self, daemon: EngineDaemon, api_key: str) -> None:
        self._daemon, self.api_key = daemon, api_key
        self._gate = Gate(self.socket, api_key, self._dispatch, self.idle_timeout)
        self._thread = threading.Thread(target=self._gate.serve, name="latent-http", daemon=True)
        self._thread.start()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._gate is not None:
            self._gate.close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.server_close()

    def _dispatch(self, sock: socket.socket, peer: tuple, data: bytes) -> None:
        """Serve a request with the key on a thread of its own (the gate calls this)."""
        if not self._slots.acquire(blocking=False):
            answer(sock, 503, f"The HTTP face serves at most {self.max_requests} requests at once; try again "
                              f"shortly.", "too_many_connections", {"Retry-After": "1"})
            return
        try:
            threading.Thread(target=self._serve, args=(sock, peer, data), daemon=True).start()
        except RuntimeError:   # no thread to be had
            self._slots.release()
            answer(sock, 503, "The HTTP face cannot take a request right now; try again shortly.", "overloaded",
                   {"Retry-After": "1"})

    def _serve(self, sock: socket.socket, peer: tuple, data: bytes) -> None:
        handler = None
        try:
            handler = Handler(sock, peer, self, data)
        except Exception:
            log.exception("HTTP request from %s failed", peer[0])
        finally:
            self._slots.release()
        gate = self._gate   # set: the gate is what called _dispatch
        if handler is not None and not handler.close_connection and not self._closed and gate is not None:
            gate.admit(sock, peer, handler.leftover)   # kept alive: the gate reads its next request
        else:
            shut(sock)


class Handler(BaseHTTPRequestHandler):
    """One request with the key, whose header block the gate has read (`data`, with whatever
    followed it); `leftover` is what came after the request, for the gate to read next."""

    protocol_version = "HTTP/1.1"
    server_version = "latent"
    rbufsize = 0           # nothing is read ahead of the request: what follows it goes back to the gate
    server: FaceServer

    def __init__(self, request, client_address, server: FaceServer, data: bytes) -> None:
        self.data, self.leftover = data, b""
        super().__init__(request, client_address, server)

    def setup(self) -> None:
        self.request.settimeout(self.server.idle_timeout)   # every read and write of this request
        super().setup()
        self.prefixed = _Prefixed(self.data, self.rfile)
        self.rfile = self.prefixed
        self.client = HttpClient(party=("http", self.server.address))
        self.ids = itertools.count(1)
        self.server.engine_daemon.attach(self.client)

    def handle(self) -> None:
        """One request; the gate reads the next one's header block."""
        self.close_connection = True
        self.handle_one_request()

    def finish(self) -> None:
        self.leftover = self.prefixed.rest()
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self.server.engine_daemon.release(self.client)

    def log_message(self, fmt, *args) -> None:   # quiet: the daemon logs its own way
        pass

    def send_error(self, code, message=None, explain=None) -> None:
        """http.server's own refusals (malformed request line, headers too large), as JSON."""
        text = (message or HTTPStatus(code).phrase).rstrip(".") + "."
        self._error(code, text, "invalid_request")

    # -- routes -----------------------------------------------------------------------------
    def do_GET(self) -> None:
        if self._admitted("/v1/models"):
            self._json(200, {"object": "list", "data": [
                {"id": self._model(), "object": "model", "created": 0, "owned_by": "latent"}]})

    def do_POST(self) -> None:
        if not self._admitted("/v1/completions"):
            return
        daemon = self.server.engine_daemon
        try:
            body = parse_json(self._body())
            prompt, params = parse_completion_request(body, daemon.engine)
            job = daemon.queue(self.client, next(self.ids), prompt, params)
        except BadRequest as e:
            self._error(e.status, str(e), e.code)
            return
        except Refused as e:
            self._error(400, str(e), "invalid_value")
            return
        try:
            if body.get("stream"):
                self._stream(job)
            else:
                self._complete(job)
        except OSError:   # the client hung up or stopped reading for IDLE_TIMEOUT
            self.close_connection = True
        finally:
            daemon.cancel(job)   # nothing once the job is done; else it leaves the queue or stops generating

    # -- one completion ---------------------------------------------------------------------
    def _complete(self, job: Job) -> None:
        text, stats = [], {}
        for reply in self._replies(job):
            if "error" in reply:
                self._job_error(reply)
                return
            text.append(reply.get("chunk", ""))
            stats = reply.get("stats") or stats
        self._json(200, completion_body(self._model(), "".join(text), stats))

    def _stream(self, job: Job) -> None:
        replies = self._replies(job)
        first = next(replies)
        if "error" in first:
            self._job_error(first)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        cid, created, model = completion_id(), int(time.time()), self._model()
        for reply in itertools.chain([first], replies):
            if "error" in reply:
                self._event(error_body(500, reply["error"], "engine_error"))
            elif "chunk" in reply:
                self._event(chunk_body(cid, created, model, reply["chunk"]))
            else:
                self._event(chunk_body(cid, created, model, "", finish(reply.get("stats") or {})))
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()

    def _replies(self, job: Job) -> Iterator[dict]:
        """The worker's replies to `job` as they come, up to its last; ConnectionAbortedError
        as soon as the HTTP client hangs up (the caller then cancels the job) or the daemon
        stops."""
        while True:
            try:
                reply = self.client.replies.get(timeout=POLL)
            except queue.Empty:
                reply = None
            if _hung_up(self.connection):
                raise ConnectionAbortedError("the HTTP client hung up")
            if reply is None and self.client.closed:
                raise ConnectionAbortedError("the daemon is stopping")
            if reply is None or reply.get("id") != job.id:
                continue
            yield reply
            if "chunk" not in reply:
                return

    # -- plumbing ---------------------------------------------------------------------------
    def _admitted(self, route: str) -> bool:
        """Whether the request carries the key and names `route`; else it is answered 401 / 404."""
        if not keys.authorized(self.headers.get("Authorization"), self.server.api_key):
            self._error(401, "This server needs its API key, sent as 'Authorization: Bearer KEY'.",
                        "invalid_api_key", {"WWW-Authenticate": "Bearer"})
            return False
        if self.path.rstrip("/") != route:
            self._error(404, f"No route for {self.command} {self.path}.", "not_found")
            return False
        return True

    def _body(self) -> bytes:
        size = body_length(self.headers.get_all("Content-Length") or [])
        data = self.rfile.read(size)
        if len(data) < size:
            raise BadRequest("The body ended before its Content-Length.")
        return data

    def _model(self) -> str:
        return getattr(self.server.engine_daemon.engine, "model_name", "latent")

    def _job_error(self, reply: dict) -> None:
        if reply.get("bad_request"):
            self._error(400, reply["error"], "invalid_value")
        else:
            self._error(500, reply["error"], "engine_error")

    def _event(self, payload: dict) -> None:
        self.wfile.write(f"data: {json.dumps(payload)}\n\n".encode())
        self.wfile.flush()

    def _json(self, status: int, payload: dict, headers: dict | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _error(self, status: int, message: str, code: str, headers: dict | None = None) -> None:
        """An error reply; the connection closes after it (its body may be unread)."""
        self.close_connection = True
        try:
            self._json(status, error_body(status, message, code), {"Connection": "close", **(headers or {})})
        except OSError:
            pass


class _Prefixed(io.BufferedIOBase):
    """The handler's rfile: the bytes the gate read first (the whole header block, maybe some
    of the body), then the socket, read no further than the request asks."""

    def __init__(self, data: bytes, stream: io.BufferedIOBase) -> None:
        super().__init__()
        self.buffer, self.stream = io.BytesIO(data), stream

    def readable(self) -> bool:
        return True

    def readline(self, size: int | None = -1) -> bytes:
        return self.buffer.readline(size)   # the header block is all in the buffer

    def read(self, size: int | None = -1) -> bytes:
        data = self.buffer.read(size)
        if size is None or size < 0:
            return data + self.stream.read()
        while len(data) < size:
            chunk = self.stream.read(size - len(data))
            if not chunk:
                break
            data += chunk
        return data

    def rest(self) -> bytes:
        """What the gate read beyond this request (the next one, pipelined)."""
        return self.buffer.read()

    def close(self) -> None:
        self.stream.close()
        super().close()


def _hung_up(sock: socket.socket) -> bool:
    """Whether the peer closed its side: readable, with nothing left to read."""
    poller = select.poll()
    poller.register(sock, select.POLLIN | select.POLLPRI)
    try:
        if not poller.poll(0):
            return False
        return sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


def serve_http(daemon: EngineDaemon, host: str, port: int, api_key: str, **limits) -> FaceServer:
    """Serve the daemon's engine over HTTP in a background thread; returns the server
    (.address is where, .close() stops it)."""
    server = FaceServer(host, port, **limits)
    server.start(daemon, api_key)
    return server
