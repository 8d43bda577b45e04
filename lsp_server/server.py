"""The Latent language server: the pygls server, its capabilities and wiring.

    session = Session(store, warnings)
    server = create(session)
    server.serve_stdio(stdin, stdout)     # or server.start_tcp(host, port)
    session.close()

Each LSP method group lives in its own module with a `register(server, session)` function;
the session (session.py) holds the state they share. The protocol (protocol.py) adds what
pygls leaves out, through its public methods.
"""
from __future__ import annotations

import asyncio
import json
import logging
import threading
from typing import BinaryIO

from lsprotocol import types
from pygls.exceptions import JsonRpcException, JsonRpcInvalidRequest, JsonRpcParseError
from pygls.io_ import StdoutWriter, run_async
from pygls.lsp.server import LanguageServer
from pygls.protocol import default_converter

from lsp_server import VERSION, commands, completion_list, documents, inline, lifecycle, settings_sync
from lsp_server.protocol import LatentProtocol
from lsp_server.session import Session

log = logging.getLogger(__name__)
MODULES = (lifecycle, documents, inline, completion_list, commands, settings_sync)


class LatentServer(LanguageServer):
    session: Session

    def serve_stdio(self, stdin: BinaryIO, stdout: BinaryIO) -> None:
        """Serve one client on stdio until it exits or closes stdin.

        pygls' start_io reads stdin on its thread pool and joins that pool when it stops, so a
        client that leaves stdin open after `exit` would keep the process alive; here stdin is
        read on a daemon thread that feeds an asyncio stream (`_pump`), and pygls' public
        message loop (`pygls.io_.run_async`) reads the stream."""
        async def serve() -> None:
            reader = asyncio.StreamReader()
            threading.Thread(target=_pump, args=(stdin, reader, asyncio.get_running_loop()),
                             name="latent-stdin", daemon=True).start()
            await run_async(stop_event=threading.Event(), reader=reader, protocol=self.protocol, logger=log,
                            error_handler=self.report_server_error)

        self.protocol.set_writer(StdoutWriter(stdout))
        try:
            asyncio.run(serve())
        except BrokenPipeError:
            log.error("The connection to the client is lost.")
        except (KeyboardInterrupt, SystemExit, asyncio.IncompleteReadError):
            pass

    def report_server_error(self, error: Exception, source) -> None:
        """Errors outside a request's answer are logged (pygls would pop up a message)."""
        if source is JsonRpcException:  # the read loop: a body that is not a JSON-RPC message
            reply = JsonRpcParseError if isinstance(error, json.JSONDecodeError) else JsonRpcInvalidRequest
            log.warning("An unreadable message was answered with %s: %s", reply.MESSAGE, error)
            self.protocol.send_error(None, reply(f"{reply.MESSAGE}: {error}"))
            return
        if getattr(source, "__name__", "") == "FeatureRequestError":
            return  # already answered with the error, and logged by pygls
        data = getattr(error, "data", None)
        trace = "".join(data.get("traceback", [])) if isinstance(data, dict) else ""
        log.error("%s%s", error, f"\n{trace}" if trace else "")


def create(session: Session) -> LatentServer:
    """The pygls server for a session, every method registered."""
    server = LatentServer("latent", VERSION, protocol_cls=LatentProtocol, converter_factory=default_converter,
                          text_document_sync_kind=types.TextDocumentSyncKind.Incremental)
    server.session = server.protocol.session = session
    session.server = server
    for module in MODULES:
        module.register(server, session)
    return server


def _pump(stream: BinaryIO, reader: asyncio.StreamReader, loop: asyncio.AbstractEventLoop) -> None:
    """Copy `stream` into `reader` as bytes arrive (a daemon thread)."""
    read = getattr(stream, "read1", stream.read)
    try:
        while chunk := read(1 << 16):
            loop.call_soon_threadsafe(reader.feed_data, chunk)
        loop.call_soon_threadsafe(reader.feed_eof)
    except (OSError, ValueError, RuntimeError):  # stdin closed, or the loop is gone
        pass
