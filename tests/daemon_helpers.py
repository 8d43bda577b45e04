"""What the daemon tests share besides fixtures (tests/conftest.py)."""
from __future__ import annotations

import socket

from model.serve.framing import recv_frame, send_frame


def raw_connection(daemon) -> socket.socket:
    """A socket to the daemon, past the handshake: for frames no client would send."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(daemon.socket_path))
    s.settimeout(10)
    send_frame(s, {"type": "hello", "version": 1})
    assert recv_frame(s)["type"] == "hello"
    return s
