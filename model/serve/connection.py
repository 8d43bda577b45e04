"""One socket client of the daemon: the handshake, its requests in, its replies out.

Quick calls (cancel, tokenize, info, stats, clear_cache, shutdown) are answered on the
connection's own thread; generations are queued on the daemon. A reply frame the client
leaves unread for SEND_TIMEOUT seconds (it stopped reading) drops the client and cancels its
jobs, so the daemon's one worker never waits on it.
"""
from __future__ import annotations

import dataclasses
import logging
import socket
import threading

from model.params import OptionError, SamplingParams

from .framing import (
    MAX_PROMPT_CHARS,
    PROTOCOL_VERSION,
    FrameError,
    close_quietly,
    plain,
    recv_frame,
    send_frame,
    sentence,
)
from .scheduler import Client, Refused

log = logging.getLogger("latent.engine")
SAMPLING_FIELDS = frozenset(f.name for f in dataclasses.fields(SamplingParams))
SEND_TIMEOUT = 5.0   # seconds a client may leave a reply frame unread before it is dropped


class Connection(Client):
    """One client's socket, its send lock, and the answers to its requests."""

    def __init__(self, sock: socket.socket, daemon) -> None:
        super().__init__()
        self.sock, self.lock, self.daemon = sock, threading.Lock(), daemon
        sock.settimeout(SEND_TIMEOUT)   # sends give up after it; reads poll on it
        self._calls = {"cancel": self._cancel, "tokenize": self._tokenize, "info": lambda p: daemon.info(),
                       "stats": lambda p: daemon.engine.stats(), "clear_cache": self._clear_cache,
                       "shutdown": self._shutdown}

    def send(self, message: dict) -> None:
        if self.closed:
            return
        try:
            send_frame(self.sock, message, self.lock)
        except socket.timeout:
            log.warning("client %d stopped reading for %.0f s: dropped", self.key, SEND_TIMEOUT)
            self.drop()
        except OSError:
            self.drop()

    def drop(self) -> None:
        super().drop()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)   # wakes the reading thread, which cleans up
        except OSError:
            pass

    def serve(self) -> None:
        """Answer this client until it leaves, the daemon stops or a frame is malformed."""
        daemon = self.daemon
        daemon.attach(self)
        try:
            if not self._handshake():
                return
            while not daemon.stopping and not self.closed:
                try:
                    message = recv_frame(self.sock)
                except socket.timeout:
                    continue   # nothing to read yet
                if message is None:
                    return
                daemon.touch()
                self._dispatch(message)
        except FrameError as e:
            self.send({"error": f"Malformed frame: {e}; closing this connection."})
        except OSError:
            pass
        finally:
            daemon.release(self)
            close_quietly(self.sock)

    def _handshake(self) -> bool:
        hello = recv_frame(self.sock)   # within SEND_TIMEOUT, else the connection closes
        if not hello or hello.get("type") != "hello":
            self.send({"error": "the first frame must be a hello handshake"})
            return False
        if hello.get("version") != PROTOCOL_VERSION:
            self.send({"error": f"protocol version {hello.get('version')!r} is not supported; "
                                f"this daemon speaks version {PROTOCOL_VERSION}"})
            return False
        self.send({"type": "hello", "version": PROTOCOL_VERSION, "info": self.daemon.info()})
        return True

    def _dispatch(self, message: dict) -> None:
        request_id, method = message.get("id"), message.get("method")
        params = message.get("params") or {}
        if not isinstance(request_id, int) or not isinstance(params, dict):
            self.send({"id": request_id, "error": "A request needs an integer id and a params map."})
            return
        if method == "generate":
            self._generate(request_id, params)
            return
        call = self._calls.get(method) if isinstance(method, str) else None
        if call is None:
            self.send({"id": request_id, "error": f"Unknown method {method!r}."})
            return
        try:
            result = call(params)
        except Refused as e:
            self.send({"id": request_id, "error": str(e), "bad_request": True})
            return
        except Exception as e:  # the daemon outlives any one request
            log.exception("%s request %s failed", method, request_id)
            self.send({"id": request_id, "error": sentence(e)})
            return
        self.send({"id": request_id, "result": plain(result)})

    def _generate(self, request_id: int, params: dict) -> None:
        """Check a generate request's fields and queue it; a bad one is answered at once."""
        prompt = params.pop("prompt", "")
        try:
            if not (isinstance(prompt, str) or isinstance(prompt, list) and all(type(t) is int for t in prompt)):
                raise ValueError("The prompt must be text or a list of token ids.")
            unknown = sorted(set(params) - SAMPLING_FIELDS)
            if unknown:
                raise ValueError(f"Unknown sampling field {unknown[0]!r}.")
            self.daemon.queue(self, request_id, prompt, SamplingParams(**params))
        except (OptionError, TypeError, ValueError) as e:
            self.send({"id": request_id, "error": sentence(e), "bad_request": True})

    # -- quick calls ------------------------------------------------------------------------
    def _cancel(self, params: dict) -> bool:
        """Cancel one of this client's generations; one still queued is answered at once."""
        target = params.get("target")
        if type(target) is not int:
            raise Refused("A cancel needs the integer id of a request as its 'target'.")
        job = self.jobs.get(target)
        if job is not None:
            self.daemon.cancel(job)
        return job is not None

    def _tokenize(self, params: dict) -> list[int]:
        text = params.get("text", "")
        if not isinstance(text, str):
            raise Refused("Tokenize takes a 'text' string.")
        if len(text) > MAX_PROMPT_CHARS:
            raise Refused(f"The text has {len(text)} characters; "
                          f"the daemon tokenizes at most {MAX_PROMPT_CHARS} characters.")
        return self.daemon.engine.tokenizer.encode(text)

    def _clear_cache(self, params: dict) -> bool:
        self.daemon.engine.clear_cache()   # between two steps of a generation in progress, which then recomputes its rows
        return True

    def _shutdown(self, params: dict) -> bool:
        self.daemon.stop()
        return True
