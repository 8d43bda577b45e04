"""Logging: records of Latent's own packages go to stderr and, in a server, to the client's
`window/logMessage`, both at the configured level (other libraries: warnings, stderr only).

pygls logs every message body at INFO; its loggers stay at WARNING unless the level is debug.
Records reach the client from any thread: they are handed to the event loop.
The command line uses this module too, so pygls and lsprotocol are imported only where a
server needs them (they cost ~0.6 s of every `latent complete`).
"""
from __future__ import annotations

import asyncio
import logging
import sys

PACKAGES = ("lsp_server", "completion", "model", "latent")
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}

_stderr = logging.StreamHandler(sys.stderr)
_stderr.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))


def setup(level: str = "info") -> None:
    """Send Latent's records at `level` and above (and other libraries' warnings) to stderr."""
    number = LEVELS.get(level, logging.INFO)
    for name in PACKAGES:
        logging.getLogger(name).setLevel(number)
    logging.getLogger("pygls").setLevel(logging.DEBUG if number <= logging.DEBUG else logging.WARNING)
    for name in ("pygls.server", "pygls.protocol.json_rpc"):
        if _answered_errors not in logging.getLogger(name).filters:
            logging.getLogger(name).addFilter(_answered_errors)
    root = logging.getLogger()
    if _stderr not in root.handlers:
        root.addHandler(_stderr)


def levels() -> dict:
    """The levels setup() changes, to put back with restore()."""
    return {name: logging.getLogger(name).level for name in (*PACKAGES, "pygls")}


def restore(saved: dict) -> None:
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)
    logging.getLogger().removeHandler(_stderr)


def _answered_errors(record: logging.LogRecord) -> bool:
    """Drop pygls' tracebacks for what the server answers and logs in one line itself:
    requests answered with InvalidParams, and unreadable messages."""
    error = record.exc_info[1] if record.exc_info else None
    if type(error).__name__ == "JsonRpcInvalidParams":   # pygls' own, not imported here
        return False
    return not str(record.msg).startswith(("Unable to handle message", "Unable to deserialize message"))


class ClientHandler(logging.Handler):
    """Forwards records to the client as window/logMessage notifications."""

    def __init__(self, server, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.server, self.loop = server, loop
        self.setFormatter(logging.Formatter("%(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        from lsprotocol import types

        kinds = {logging.DEBUG: types.MessageType.Log, logging.INFO: types.MessageType.Info,
                 logging.WARNING: types.MessageType.Warning, logging.ERROR: types.MessageType.Error}
        try:
            params = types.LogMessageParams(type=kinds.get(record.levelno, types.MessageType.Error),
                                            message=self.format(record))
            self.loop.call_soon_threadsafe(self.deliver, params)
        except RuntimeError:  # the loop is closed: the session is over
            pass

    def deliver(self, params) -> None:
        if self.server.protocol.writer is not None:
            self.server.window_log_message(params)


def attach(handler: logging.Handler) -> None:
    for name in PACKAGES:
        logging.getLogger(name).addHandler(handler)


def detach(handler: logging.Handler) -> None:
    for name in PACKAGES:
        logging.getLogger(name).removeHandler(handler)
