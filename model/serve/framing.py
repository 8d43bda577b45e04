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
    ← {"id": n, "error": "one sentence"}
"""
from __future__ import annotations

import os
import socket
import struct
import threading
from pathlib import Path
from typing import Any

import msgpack

PROTOCOL_VERSION = 1
MAX_FRAME = 8 << 20


class FrameError(Exception):
    """A frame that is malformed, oversized or cut off; the connection cannot go on."""


class RPCError(Exception):
    """The daemon could not be reached or answered with an error; one sentence."""


# ---------------------------------------------------------------------------------------------
# where the socket lives

def runtime_dir() -> Path:
    """$XDG_RUNTIME_DIR/latent (else ~/.cache/latent), made private to this user."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    folder = Path(base) / "latent" if base else Path.home() / ".cache" / "latent"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(folder, 0o700)
    return folder


def default_socket_path() -> Path:
    return runtime_dir() / "engine.sock"


# ---------------------------------------------------------------------------------------------
# frames

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


def close_quietly(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass


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
