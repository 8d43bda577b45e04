"""The daemon's wire: length-prefixed msgpack frames over a Unix socket, where the socket
lives, and the small helpers both ends share. Imports no torch.

Each frame is a 4-byte big-endian length and a msgpack map, at most MAX_FRAME bytes. A
connection opens with a handshake, then carries requests by id:

    → {"type": "hello", "version": 1}              ← {"type": "hello", "version": 1, "info": {...}}
    → {"id": 7, "method": "generate", "params": {"prompt": ..., **SamplingParams.as_dict()}}
    ← {"id": 7, "chunk": "text", "stats": {...}} …  ← {"id": 7, "done": true, "stats": {...}}
    → {"id": 8, "method": "cancel", "params": {"target": 7}}                  ← {"id": 8, "result": true}
    → {"id": 9, "method": "tokenize" | "info" | "stats" | "clear_cache" | "shutdown", "params": {...}}
    ← {"id": 9, "result": ...}
    ← {"id": n, "error": "one sentence"}           (with "bad_request": true when the request was at fault)

Limits: a frame is at most MAX_FRAME bytes, a prompt at most MAX_PROMPT_CHARS characters or
MAX_PROMPT_IDS token ids, and a client has at most MAX_QUEUED generations waiting (daemon.py).
"""
from __future__ import annotations

import errno
import logging
import os
import socket
import struct
import sys
import threading
import time
from pathlib import Path
from typing import Any

import msgpack

PROTOCOL_VERSION = 1
MAX_FRAME = 8 << 20
MAX_PROMPT_CHARS = 1 << 20       # a prompt's (or a text to tokenize's) characters
MAX_PROMPT_IDS = 262_144         # a prompt's token ids
FRAME_PATIENCE = 30.0            # seconds a frame that has begun may take to arrive whole
# sizeof(sockaddr_un.sun_path): the longest a Unix socket's path may be, in bytes
UNIX_PATH_MAX = 104 if sys.platform == "darwin" or "bsd" in sys.platform else 108


class FrameError(Exception):
    """A frame that is malformed, oversized or cut off; the connection cannot go on."""


class RPCError(Exception):
    """The daemon could not be reached or answered with an error; one sentence."""


# ---------------------------------------------------------------------------------------------
# where the socket lives

def runtime_dir(create: bool = True) -> Path:
    """$XDG_RUNTIME_DIR/latent (else ~/.cache/latent), made (unless `create` is false) and
    kept private to this user."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    folder = Path(base) / "latent" if base else Path.home() / ".cache" / "latent"
    if create:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(folder, 0o700)
    return folder


def default_socket_path(create: bool = True) -> Path:
    return runtime_dir(create) / "engine.sock"


def model_socket_path(key: str, create: bool = True) -> Path:
    """The socket of the daemon that serves one other model beside the default one (a
    workspace's adapted model, `key` its folder's name): its own process and latent cache
    (the language server gives it its own cache file too)."""
    return runtime_dir(create) / f"engine-{key}.sock"


def socket_alive(path: Path) -> bool:
    """Whether something accepts connections on the Unix socket at `path`."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(0.5)
    try:
        probe.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        probe.close()


def check_socket_path(path: Path) -> None:
    """RPCError, in one sentence, for a path too long to bind or connect a Unix socket to."""
    size = len(os.fsencode(path))
    if size >= UNIX_PATH_MAX:
        raise RPCError(f"The socket path {path} is {size} bytes long, but a Unix socket path must be shorter "
                       f"than {UNIX_PATH_MAX} bytes here; choose a shorter one.")


# ---------------------------------------------------------------------------------------------
# frames

def send_frame(sock: socket.socket, message: dict, lock: threading.Lock | None = None) -> None:
    data = msgpack.packb(message, use_bin_type=True)
    assert isinstance(data, bytes), "packb returns the bytes (its Packer resets after each object)"
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
    """n bytes. A socket timeout before the frame began is raised (the caller polls); once it
    has begun, the rest may take FRAME_PATIENCE seconds, so no frame is ever cut in two."""
    chunks, got, deadline = [], 0, None
    while got < n:
        try:
            chunk = sock.recv(n - got)
        except socket.timeout:
            if allow_eof and got == 0:
                raise
            deadline = deadline or time.monotonic() + FRAME_PATIENCE
            if time.monotonic() > deadline:
                raise FrameError(f"a frame stalled halfway for {FRAME_PATIENCE:.0f} s") from None
            continue
        if not chunk:
            if allow_eof and got == 0:
                return None
            raise FrameError("connection closed in the middle of a frame")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def close_quietly(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass


class AcceptBackoff:
    """What a listener does when accept() runs out of file descriptors (EMFILE, ENFILE): log
    once, pause a moment and keep serving; the waiting connections are accepted once some
    descriptors are free again."""

    ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)

    def __init__(self, what: str, pause: float = 0.2) -> None:
        self.what, self.pause, self.warned = what, pause, False

    def __call__(self, error: OSError) -> bool:
        """True when `error` is a shortage this waited out; False for any other error."""
        if error.errno not in self.ERRORS:
            return False
        if not self.warned:
            logging.getLogger("latent.engine").warning(
                "%s: out of file descriptors (%s); new connections wait until some are free",
                self.what, error.strerror)
            self.warned = True
        time.sleep(self.pause)
        return True

    def accepted(self) -> None:
        self.warned = False    # the next shortage is logged again


# ---------------------------------------------------------------------------------------------
# shared helpers

def sentence(e: BaseException) -> str:
    """An error as one sentence: its message's first line (else its type), ending in a stop."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    text = lines[0] if lines else type(e).__name__
    return text if text.endswith((".", "!", "?")) else text + "."


def plain(value: Any) -> Any:
    """A copy that msgpack and JSON both carry: tuples and sets to lists, keys and unknown
    objects to strings."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
