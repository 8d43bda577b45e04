"""The HTTP face's API key: chosen at start, kept beside the socket, checked in constant time.

`latent engine serve --http …` takes `--api-key-file FILE` or `--api-key KEY`, else makes a
new key with secrets.token_urlsafe. A key file that other users can read or write is refused,
as ssh refuses such a private key: whoever can read the key can use the face, so serving with
it would only look protected. The key in effect is written to `engine.key` beside
`engine.sock` (mode 0600, in the 0700 runtime folder) and the face's address to
`engine.http`; both go when the daemon exits. RemoteEngine reads that key for a URL naming
exactly that address (http://127.0.0.1:PORT, not localhost) while the daemon at the default
socket is up, so `engine = "openai:http://127.0.0.1:PORT"` needs no `api_key_env`.
Imports no torch.
"""
from __future__ import annotations

import hmac
import os
import secrets
import stat
from pathlib import Path

from ..private_files import write_private
from .framing import default_socket_path, socket_alive


def new_key() -> str:
    return secrets.token_urlsafe(32)


class ExposedKey(ValueError):
    """A key file other users can read or write; str(error) is one sentence."""


def read_key_file(path: Path) -> str:
    """The key in a file (its first line); ExposedKey for a file other users can read or
    write, ValueError (one sentence) for an empty one."""
    path = Path(path).expanduser()
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        raise ExposedKey(f"{path} can be read or written by other users (mode {mode:04o}), who could then use "
                         f"the HTTP face; make it private (chmod 600 {path}), as ssh requires of a private key.")
    text = path.read_text(encoding="utf-8").strip()
    key = text.splitlines()[0].strip() if text else ""
    if not key:
        raise ValueError(f"The API key file {path} is empty.")
    return key


def authorized(header: str | None, key: str) -> bool:
    """Whether an Authorization header carries `Bearer <key>`, compared in constant time."""
    given = (header or "").strip().encode("latin-1", "replace")   # http.client decodes headers as latin-1
    return hmac.compare_digest(given, f"Bearer {key}".encode("latin-1", "replace"))


def address(host: str, port: int) -> str:
    """host:port as in a URL: [::1]:8012 for IPv6."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def key_path(socket_path: Path) -> Path:
    return Path(socket_path).with_suffix(".key")


def publish(socket_path: Path, key: str, where: str) -> Path:
    """Write the key and the face's address beside the socket, readable by this user only;
    returns the key file."""
    write_private(key_path(socket_path), (key + "\n").encode())
    write_private(Path(socket_path).with_suffix(".http"), (where + "\n").encode())
    return key_path(socket_path)


def withdraw(socket_path: Path) -> None:
    for path in (key_path(socket_path), Path(socket_path).with_suffix(".http")):
        try:
            path.unlink(missing_ok=True)
        except OSError:
            pass


def local_key(host: str, port: int | None) -> str | None:
    """The key of this user's daemon (default socket) when its face serves exactly host:port."""
    sock = default_socket_path(create=False)
    try:
        served = sock.with_suffix(".http").read_text(encoding="utf-8").strip()
        key = key_path(sock).read_text(encoding="utf-8").strip()
    except OSError:
        return None
    if port is None or served != address(host, port) or not key or not socket_alive(sock):
        return None
    return key

