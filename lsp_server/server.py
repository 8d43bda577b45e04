"""The Latent language server: the pygls server, its capabilities and wiring.

    session = Session(store, warnings)
    server = create(session)
    server.serve_stdio(stdin, stdout)     # or server.start_tcp(host, port)
    session.close()

Each LSP method group lives in its own module with a `register(server, session)` function;
the session (session.py) holds the state they share. The protocol (protocol.py) adds what
pygls leaves out, through its public methods; the transport (transport.py) reads stdin.
"""
from __future__ import annotations

import asyncio
import logging
from typing import BinaryIO

from lsprotocol import types
from pygls.io_ import StdoutWriter
from pygls.lsp.server import LanguageServer
from pygls.protocol import default_converter

from lsp_server import VERSION, commands, completion_list, documents, inline, lifecycle, settings_sync, transport
from lsp_server.protocol import LatentProtocol
from lsp_server.session import Session

log = logging.getLogger(__name__)
MODULES = (lifecycle, documents, inline, completion_list, commands, settings_sync)


class LatentServer(LanguageServer):
    session: Session
    protocol: LatentProtocol

    def serve_stdio(self, stdin: BinaryIO, stdout: BinaryIO) -> None:
        """Serve one client on stdio until it exits or closes stdin.

        pygls' start_io reads stdin on its thread pool and joins that pool when it stops, so a
        client that leaves stdin open after `exit` would keep the process alive, and its reader
        goes deaf after one malformed frame: transport.py reads instead."""
        async def serve() -> str | None:
            return await self.serve_stream(transport.stdin_reader(stdin))

        self.protocol.set_writer(StdoutWriter(stdout))
        try:
            reason = asyncio.run(serve())
        except BrokenPipeError:
            log.error("The connection to the client is lost.")
        except (KeyboardInterrupt, SystemExit):
            pass
        else:
            self.stream_ended(reason)

    def start_tcp(self, host: str, port: int) -> None:
        """Serve the client that connects to a TCP port, with the same transport; the server ends
        with the connection."""
        async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.protocol.set_writer(writer)
            self.stream_ended(await self.serve_stream(reader))
            raise SystemExit   # the client is gone (as with pygls' start_tcp, the server ends)

        async def listen() -> None:
            async with await asyncio.start_server(connection, host, port) as server:
                log.info("Serving on %s:%s.", host, port)
                await server.serve_forever()

        asyncio.run(listen())

    async def serve_stream(self, reader: asyncio.StreamReader) -> str | None:
        def limit() -> int:   # read for every frame: max_message_mb may change
            return self.session.settings.max_message_mb << 20

        return await transport.serve(reader, self.protocol.receive, self.protocol.refuse_oversized, limit)

    def stream_ended(self, reason: str | None) -> None:
        if reason is not None:   # an unreadable stream: exit, and the editor restarts the server
            log.error("%s The server exits so that the editor can restart it.", reason)
            self.session.exit_code = 1

    def report_server_error(self, error: Exception, source) -> None:
        """Errors outside a request's answer are logged (pygls would pop up a message)."""
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
