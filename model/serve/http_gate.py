"""The HTTP face's front door: every request's header block is read here, on one thread, before
any handler thread is spent on it.

A connection waits at the gate for each request's whole header block — from its accept, or
from its previous reply on a kept-alive connection — and has `timeout` seconds for all of it,
however it dribbles: one byte every few seconds does not keep it alive (nginx's
client_header_timeout, Go's ReadHeaderTimeout and Node's headersTimeout bound the whole block
the same way; a per-read timeout does not). A block is at most MAX_HEADER bytes (431 beyond,
as h11's max_incomplete_event_size). Only then is the request looked at: one without the API
key is answered 401 here and closed; one with it goes to `dispatch`, which serves it on a
handler thread (openai_http.py). Connections that have not shown the key — however many,
however slow — thus never hold a handler, and the key's holder never waits behind them; idle
kept-alive connections wait here too, holding no handler (as nginx keeps them in its event
loop). At most MAX_WAITING connections wait at once: a new one beyond that closes the one that
has waited longest, so a flood of new connections cannot keep out the owner's, whose header
block arrives at once.
"""
from __future__ import annotations

import collections
import http.client
import io
import json
import logging
import re
import selectors
import socket
import threading
import time
from typing import Callable

from . import keys
from .framing import AcceptBackoff
from .openai_api import error_body

log = logging.getLogger("latent.engine")
MAX_HEADER = 32 << 10      # bytes of a request's header block (request line included)
MAX_WAITING = 256          # connections waiting for a header block at once
HEADER_END = re.compile(rb"\r?\n\r?\n")

Dispatch = Callable[[socket.socket, tuple, bytes], None]   # (connection, peer, bytes read so far)


class _Waiting:
    """A connection waiting for its header block: what has come so far, and until when."""

    __slots__ = ("sock", "peer", "data", "scanned", "deadline")

    def __init__(self, sock: socket.socket, peer: tuple, data: bytes, deadline: float) -> None:
        self.sock, self.peer, self.data, self.deadline = sock, peer, data, deadline
        self.scanned = 0   # bytes of data searched for the block's end already


class Gate:
    """Accepts on `listener` and reads header blocks; see the module's docstring."""

    def __init__(self, listener: socket.socket, api_key: str, dispatch: Dispatch, timeout: float,
                 max_waiting: int = MAX_WAITING) -> None:
        self.listener, self.api_key, self.dispatch = listener, api_key, dispatch
        self.timeout, self.max_waiting = timeout, max_waiting
        self._waiting: collections.OrderedDict[socket.socket, _Waiting] = collections.OrderedDict()   # oldest first
        self._returned: list[tuple[socket.socket, tuple, bytes]] = []
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector = selectors.DefaultSelector()
        listener.setblocking(False)
        self._selector.register(listener, selectors.EVENT_READ)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._backoff = AcceptBackoff(f"HTTP face on {keys.address(*listener.getsockname()[:2])}")
        self._closed = False

    def admit(self, sock: socket.socket, peer: tuple, data: bytes = b"") -> None:
        """Wait for the next request on a kept-alive connection (any thread may call this)."""
        with self._lock:
            if not self._closed:
                self._returned.append((sock, peer, data))
                self._wake_w.send(b"\0")
                return
        shut(sock)

    def serve(self) -> None:
        """The gate's loop, until close()."""
        while not self._closed:
            try:
                self._once()
            except Exception:   # the face outlives any one connection
                log.exception("the HTTP face's gate failed on a connection")
        self._close_all()

    def _once(self) -> None:
        accept = False
        for key, _ in self._selector.select(self._next_timeout()):
            if key.fileobj is self.listener:
                accept = True
            elif key.fileobj is self._wake_r:
                self._wake_r.recv(4096)
            elif key.data.sock in self._waiting:
                self._read(key.data)
        self._take_returned()
        if accept:   # after the reads: a block that has arrived is never closed by a newcomer
            self._accept()
        self._expire()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._wake_w.send(b"\0")

    # -- waiting connections ----------------------------------------------------------------
    def _accept(self) -> None:
        try:
            sock, peer = self.listener.accept()
        except BlockingIOError:
            return
        except OSError as e:
            self._backoff(e)   # out of descriptors: pause, then go on
            return
        self._backoff.accepted()
        self._wait(sock, peer, b"")

    def _take_returned(self) -> None:
        with self._lock:
            returned, self._returned = self._returned, []
        for sock, peer, data in returned:
            self._wait(sock, peer, data)

    def _wait(self, sock: socket.socket, peer: tuple, data: bytes) -> None:
        if len(self._waiting) >= self.max_waiting:
            self._drop(next(iter(self._waiting.values())))   # the one that has waited longest
        sock.setblocking(False)
        waiting = _Waiting(sock, peer, data, time.monotonic() + self.timeout)
        self._waiting[sock] = waiting
        self._selector.register(sock, selectors.EVENT_READ, waiting)
        self._check(waiting)   # a kept-alive connection may have sent its next request already

    def _read(self, waiting: _Waiting) -> None:
        try:
            chunk = waiting.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._drop(waiting)   # the client closed it
            return
        waiting.data += chunk
        self._check(waiting)

    def _check(self, waiting: _Waiting) -> None:
        """Hand on a connection whose header block is whole, answer one whose block is too long."""
        if waiting.data[:1] in (b"\r", b"\n"):   # empty lines before a request are ignored (RFC 9112, 2.2)
            waiting.data, waiting.scanned = waiting.data.lstrip(b"\r\n"), 0
        found = HEADER_END.search(waiting.data, max(0, waiting.scanned - 3))
        waiting.scanned = len(waiting.data)
        if found is None and len(waiting.data) <= MAX_HEADER:
            return
        self._unwait(waiting)
        if found is None or found.end() > MAX_HEADER:
            answer(waiting.sock, 431, f"The request's headers are over {MAX_HEADER} bytes.", "headers_too_large")
            return
        verdict = self._verdict(waiting.data[: found.end()])
        if verdict is not None:
            answer(waiting.sock, *verdict)
            return
        self.dispatch(waiting.sock, waiting.peer, waiting.data)

    def _verdict(self, block: bytes) -> tuple | None:
        """None for a block that carries the key; else the answer: (status, message, code, headers)."""
        _request_line, _, fields = block.partition(b"\n")
        try:   # the parser BaseHTTPRequestHandler uses, so both read the same Authorization
            headers = http.client.parse_headers(io.BytesIO(fields))
        except http.client.HTTPException:
            return 431, "The request has too many header lines.", "headers_too_large", {}
        if keys.authorized(headers.get("Authorization"), self.api_key):
            return None
        return (401, "This server needs its API key, sent as 'Authorization: Bearer KEY'.", "invalid_api_key",
                {"WWW-Authenticate": "Bearer"})

    def _next_timeout(self) -> float:
        if not self._waiting:
            return 0.5
        first = next(iter(self._waiting.values()))
        return min(0.5, max(0.0, first.deadline - time.monotonic()))

    def _expire(self) -> None:
        """Close the connections whose header block did not come whole in time (no answer, as
        an idle connection gets none)."""
        now = time.monotonic()
        while self._waiting:
            first = next(iter(self._waiting.values()))
            if first.deadline > now:   # deadlines grow with admission order
                return
            self._drop(first)

    def _unwait(self, waiting: _Waiting) -> None:
        del self._waiting[waiting.sock]
        self._selector.unregister(waiting.sock)

    def _drop(self, waiting: _Waiting) -> None:
        self._unwait(waiting)
        shut(waiting.sock)

    def _close_all(self) -> None:
        for waiting in list(self._waiting.values()):
            self._drop(waiting)
        with self._lock:
            returned, self._returned = self._returned, []
        for sock, _, _ in returned:
            shut(sock)
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()


def answer(sock: socket.socket, status: int, message: str, code: str, headers: dict | None = None) -> None:
    """An error reply written straight to the connection's (empty) send buffer, then closed."""
    data = json.dumps(error_body(status, message, code)).encode()
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    head = (f"HTTP/1.1 {status} {http.client.responses.get(status, 'Error')}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n{extra}Connection: close\r\n\r\n").encode()
    try:
        sock.send(head + data)
    except OSError:
        pass
    shut(sock)


def shut(sock: socket.socket) -> None:
    """Close a connection, telling the client first that nothing more comes."""
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    sock.close()
