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
from lsp_server.config import client_layer
from lsp_server.loading import ensure_model

log = logging.getLogger(__name__)


def register(server) -> None:
    @server.feature(types.INITIALIZE)
    def initialize(ls, params: types.InitializeParams) -> None:
        layer, warnings = client_layer(params.initialization_options)
        ls.store.init = layer
        ls.startup_warnings += warnings
        ls.settings, more = ls.store.settings()
        ls.startup_warnings += more
        ls.status.enabled = ls.settings.enable
        logs.setup(ls.settings.log_level)
        ls.log_handler = logs.ClientHandler(ls, asyncio.get_running_loop())
        logs.attach(ls.log_handler)

    @server.feature(types.INITIALIZED)
    def initialized(ls, params: types.InitializedParams) -> None:
        ls.initialized = True
        for warning in dict.fromkeys(ls.startup_warnings):
            log.warning("%s", warning)
        ls.spawn(ensure_model(ls))

    @server.feature(types.SHUTDOWN)
    def shutdown(ls, params) -> None:
        ls.shut_down = True
        ls.worker.stop(timeout=1.0)
        log.info("Shutting down.")

    @server.feature(types.EXIT)
    def exit_(ls, params) -> None:
        ls.exit_code = 0 if ls.shut_down else 1
        handler = getattr(ls, "log_handler", None)
        if handler is not None:
            logs.detach(handler)
