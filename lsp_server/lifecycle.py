"""initialize, initialized, shutdown, exit.

initialize reads `initializationOptions` (a settings layer) and starts forwarding log records
to the client; initialized starts loading the model; shutdown stops the worker (queued
completions are answered empty) and exit records the exit status (0 after shutdown, else 1).
"""
from __future__ import annotations

import asyncio
import logging

from lsprotocol import types

from lsp_server import logs
from lsp_server.loading import ensure_model
from lsp_server.settings import client_layer

log = logging.getLogger(__name__)


def register(server, session) -> None:
    @server.feature(types.INITIALIZE)
    def initialize(params: types.InitializeParams) -> None:
        session.store.init, warnings = client_layer(params.initialization_options)
        session.startup_warnings += warnings + session.reread_settings()
        logs.setup(session.settings.log_level)
        session.log_handler = logs.ClientHandler(server, asyncio.get_running_loop())
        logs.attach(session.log_handler)

    @server.feature(types.INITIALIZED)
    def initialized(params: types.InitializedParams) -> None:
        session.initialized = True
        for warning in dict.fromkeys(session.startup_warnings):   # a settings problem: in the log and
            log.warning("%s", warning)                              # where the user looks
            server.window_show_message(types.ShowMessageParams(type=types.MessageType.Warning,
                                                               message=f"Latent: {warning}"))
        session.spawn(ensure_model(session))

    @server.feature(types.SHUTDOWN)
    def shutdown(params) -> None:
        session.shut_down = True
        session.worker.stop(timeout=1.0)
        log.info("Shutting down.")

    @server.feature(types.EXIT)
    def exit_(params) -> None:
        session.exit_code = 0 if session.shut_down else 1
        if session.log_handler is not None:
            logs.detach(session.log_handler)
