"""An OpenAI-compatible HTTP face for the daemon: `POST /v1/completions`, `GET /v1/models`.

Served by `latent engine serve --http 127.0.0.1:PORT` (or `[::1]:PORT`), on loopback only,
so any client of the OpenAI completions API (streaming or not) can use Latent's engine and
its latent reuse. The request format is openai_api.py's. What guards it:

- every request carries `Authorization: Bearer KEY` (keys.py), else 401;
- at most MAX_CONNECTIONS connections at once (beyond, 503 and closed), headers of at most
  MAX_HEADER bytes (431), bodies of at most MAX_BODY (413), IDLE_TIMEOUT seconds of silence;
- a completion is a job of the daemon's fair scheduler, and all the face's connections are one
  party of it (they carry its one key), so HTTP takes turns with each socket client as one
  client, however many connections it opens; a completion is cancelled when its HTTP client
  hangs up.
"""
from __future__ import annotations

import http.client
import itertools
import json
import logging
import queue
import select
import socket
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

from . import keys
from .framing import AcceptBackoff
from .openai_api import (BadRequest, body_length, chunk_body, completion_body, completion_id, error_body, finish,
                         parse_completion_request, parse_json)
from .scheduler import Client, Job, Refused

log = logging.getLogger("latent.engine")
LOOPBACK = ("127.0.0.1", "localhost", "::1")   # the only hosts the face binds to
MAX_CONNECTIONS = 32
MAX_HEADER = 32 << 10      # bytes of header lines per request
IDLE_TIMEOUT = 10.0        # seconds a connection may send nothing (or leave a reply unread)
POLL = 0.1                 # seconds between checks that a waiting client is still there


class HttpClient(Client):
    """One HTTP connection as a client of the daemon: the worker's replies wait in a queue
    for the connection's handler thread."""

    def __init__(self, party) -> None:
        super().__init__(party)
        self.replies: queue.SimpleQueue[dict] = queue.SimpleQueue()

    def send(self, message: dict) -> None:
        if not self.closed:
            self.replies.put(message)


class FaceServer(ThreadingHTTPServer):
    """The listening face: bound at construction (so a bad address fails before the model
    loads), serving once start() hands it the daemon and the key."""

    daemon_threads = True
    request_queue_size = 64

    def __init__(self, host: str, port: int, *, max_connections: int = MAX_CONNECTIONS,
                 idle_timeout: float = IDLE_TIMEOUT) -> None:
        if host not in LOOPBACK:
            raise ValueError(f"The HTTP face binds to loopback only, not {host!r}.")
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.max_connections, self.idle_timeout = max_connections, idle_timeout
        self.engine_daemon = None
        self.api_key = ""
        self._slots = threading.BoundedSemaphore(max_connections)
        self._backoff = AcceptBackoff(f"HTTP face on {host}:{port}")
        self._thread: threading.Thread | None = None
        self._closed = False
        super().__init__((host, port), Handler)

    @property
    def address(self) -> str:
        """host:port as bound (the real port when 0 was asked for)."""
        host, port = self.server_address[:2]
        return keys.address(host, port)

    def start(self, daemon, api_key: str) -> None:
        self.engine_daemon, self.api_key = daemon, api_key
        self._thread = threading.Thread(target=self.serve_forever, name="latent-http", daemon=True)
        self._thread.start()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self.shutdown()
        self.server_close()

    # -- socketserver's hooks ---------------------------------------------------------------
    def get_request(self):
        try:
            request = super().get_request()
        except OSError as e:
            self._backoff(e)   # out of descriptors: pause; socketserver carries on either way
            raise
        self._backoff.accepted()
        return request

    def verify_request(self, request, client_address) -> bool:
        if self._slots.acquire(blocking=False):
            return True
        _refuse(request, f"The HTTP face serves at most {self.max_connections} connections at once; try again shortly.")
        return False

    def finish_request(self, request, client_address) -> None:
        try:
            super().finish_request(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request, client_address) -> None:
        log.exception("HTTP request from %s failed", client_address[0])


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "latent"
    server: FaceServer

    def setup(self) -> None:
        self.timeout = self.server.idle_timeout   # every read and write of this connection
        super().setup()
        self.rfile = _HeaderBudget(self.rfile)
        self.client = HttpClient(party=("http", self.server.address))
        self.ids = itertools.count(1)
        self.server.engine_daemon.attach(self.client)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self.server.engine_daemon.release(self.client)

    def parse_request(self) -> bool:
        self.rfile.budget = MAX_HEADER   # the header lines parse_request reads draw on it
        try:
            return super().parse_request()
        finally:
            self.rfile.budget = None

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


class _HeaderBudget:
    """The handler's rfile, with a byte budget on the lines read while it is set (the headers)."""

    def __init__(self, raw) -> None:
        self.raw, self.budget = raw, None

    def readline(self, limit: int = -1) -> bytes:
        line = self.raw.readline(limit)
        if self.budget is not None:
            self.budget -= len(line)
            if self.budget < 0:   # parse_request answers it with 431
                raise http.client.LineTooLong(f"headers over {MAX_HEADER} bytes")
        return line

    def read(self, size: int = -1) -> bytes:
        return self.raw.read(size)

    def close(self) -> None:
        self.raw.close()


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


def _refuse(request: socket.socket, message: str) -> None:
    """503 on a connection over the limit, written straight to its (empty) send buffer."""
    data = json.dumps(error_body(503, message, "too_many_connections")).encode()
    head = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n").encode()
    try:
        request.settimeout(0.5)
        request.sendall(head + data)
    except OSError:
        pass


def serve_http(daemon, host: str, port: int, api_key: str, **limits) -> FaceServer:
    """Serve the daemon's engine over HTTP in a background thread; returns the server
    (.address is where, .close() stops it)."""
    server = FaceServer(host, port, **limits)
    server.start(daemon, api_key)
    return server
