"""The Latent language server: capabilities, state and wiring.

Each LSP method group lives in its own module with a `register(server)` function:
`lifecycle` (initialize, initialized, shutdown, exit), `documents` (didOpen / didChange /
didClose), `inline` (textDocument/inlineCompletion), `completion_items`
(textDocument/completion), `commands` (workspace/executeCommand), `configuration`
(workspace/didChangeConfiguration). `loading` loads the model in the background; `worker`
runs completions off the event loop; `status` sends `latent/status`.

State: notifications mutate the open documents on the event loop at once; requests work on
snapshots taken as they arrive; the engine and the completion service are replaced as a
pair when the model (re)loads, and the open documents move across.
"""
from __future__ import annotations

import asyncio
import dataclasses
import inspect
import json
import logging
from importlib import metadata

from lsprotocol import types
from pygls.exceptions import (JsonRpcException, JsonRpcInvalidParams, JsonRpcInvalidRequest,
                              JsonRpcMethodNotFound, JsonRpcParseError)
from pygls.lsp.server import LanguageServer
from pygls.protocol import LanguageServerProtocol, default_converter
from pygls.protocol.language_server import lsp_method

from completion import CompletionConfig, CompletionService, Workspace
from lsp_server import (commands, completion_items, configuration, documents, inline, lifecycle, logs,
                        status)
from lsp_server.config import Settings, SettingsStore
from lsp_server.loading import ensure_model
from lsp_server.status import Status
from lsp_server.worker import Worker

log = logging.getLogger(__name__)

try:
    VERSION = metadata.version("latent-coder")
except metadata.PackageNotFoundError:
    VERSION = "0.1.0"


class _Unreadable:
    """A request whose params could not be read: it is answered with the error."""

    def __init__(self, msg_id, error: JsonRpcException) -> None:
        self.id, self.error = msg_id, error


class LatentProtocol(LanguageServerProtocol):
    """pygls' protocol with five changes:

    1. positions are always UTF-16 (completion's documents count in UTF-16 code units);
    2. a request that has an arrival hook (the completions) takes its snapshot as it arrives,
       before any later message is handled, whatever the transport;
    3. didOpen / didChange / didClose go straight to our handlers: pygls keeps no second copy
       of the text (and its generator dispatch would leave a future behind per keystroke);
    4. workspace/executeCommand awaits async commands directly, for the same reason;
    5. a request whose params cannot be read is answered with InvalidParams (or MethodNotFound),
       and a body that is not JSON with a ParseError (see LatentServer.report_server_error),
       instead of being dropped.
    """

    _server: "LatentServer"

    @lsp_method(types.INITIALIZE)
    def lsp_initialize(self, params: types.InitializeParams):
        if params.capabilities.general is not None:
            params.capabilities.general.position_encodings = [types.PositionEncodingKind.Utf16]
        result = yield from super().lsp_initialize(params)
        if not self._server.offers_completion_items():
            result.capabilities.completion_provider = None
        return result

    def _handle_request(self, msg_id, method_name, params):
        arrive = self._server.arrivals.get(method_name)
        if arrive is not None:
            try:
                self._server.pending[msg_id] = arrive(self._server, msg_id, params)
            except Exception:
                log.exception("Could not take the snapshot for request %s", msg_id)
        super()._handle_request(msg_id, method_name, params)

    def _handle_cancel_notification(self, msg_id):
        pending = self._server.pending.pop(msg_id, None)
        if pending is not None and pending.job is not None:
            pending.job.cancel.cancel()
        super()._handle_cancel_notification(msg_id)

    def _document_notification(self, method: str, params) -> None:
        handler = self.fm.features.get(method)
        if handler is not None:
            handler(params)

    @lsp_method(types.TEXT_DOCUMENT_DID_OPEN)
    def lsp_text_document__did_open(self, params):
        self._document_notification(types.TEXT_DOCUMENT_DID_OPEN, params)

    @lsp_method(types.TEXT_DOCUMENT_DID_CHANGE)
    def lsp_text_document__did_change(self, params):
        self._document_notification(types.TEXT_DOCUMENT_DID_CHANGE, params)

    @lsp_method(types.TEXT_DOCUMENT_DID_CLOSE)
    def lsp_text_document__did_close(self, params):
        self._document_notification(types.TEXT_DOCUMENT_DID_CLOSE, params)

    @lsp_method(types.WORKSPACE_EXECUTE_COMMAND)
    async def lsp_workspace__execute_command(self, params: types.ExecuteCommandParams):
        handler = self.fm.commands.get(params.command)
        if handler is None:
            raise JsonRpcInvalidParams(f"Command {params.command!r} is not defined.")
        arguments = list(params.arguments or [])
        function = getattr(handler, "func", None)   # pygls binds the server as the first argument
        try:
            if function is not None:
                inspect.signature(function).bind(None, *arguments)
            else:
                inspect.signature(handler).bind(*arguments)
        except TypeError as e:
            raise JsonRpcInvalidParams(f"Command {params.command} takes other arguments: {e}.") from None
        result = handler(*arguments)
        return await result if inspect.isawaitable(result) else result

    def structure_message(self, data):
        try:
            return super().structure_message(data)
        except JsonRpcException:
            if "id" not in data or "method" not in data:
                raise
            method = data["method"]
            try:
                self._get_handler(method)
            except JsonRpcMethodNotFound as unknown:
                return _Unreadable(data["id"], unknown)
            return _Unreadable(data["id"], JsonRpcInvalidParams(f"The params of {method} could not be read."))

    def handle_message(self, message):
        if isinstance(message, _Unreadable):
            log.warning("Request %s: %s", message.id, message.error.message)
            self._send_response(message.id, error=message.error.to_response_error())
            return
        super().handle_message(message)


class LatentServer(LanguageServer):
    def __init__(self, store: SettingsStore, warnings: list[str] | None = None) -> None:
        super().__init__("latent", VERSION, protocol_cls=LatentProtocol, converter_factory=default_converter,
                         text_document_sync_kind=types.TextDocumentSyncKind.Incremental)
        self.store = store
        self.settings, more = store.settings()
        self.startup_warnings = list(warnings or []) + more
        self.status = Status(enabled=self.settings.enable, model=self.settings.model or "bundled")
        self.worker = Worker()
        self.engine = None
        self.service: CompletionService | None = None
        self._documents = Workspace()    # documents opened while no model is loaded
        self.loading = False
        self.attempted_key: tuple | None = None
        self.arrivals: dict = {}         # method -> hook run as a request arrives
        self.pending: dict = {}          # request id -> completions.Pending
        self.shut_down = False
        self.exit_code: int | None = None
        self.initialized = False
        self._tasks: set[asyncio.Task] = set()

        for module in (lifecycle, documents, inline, completion_items, commands, configuration):
            module.register(self)

    # -- state -------------------------------------------------------------------------------
    @property
    def documents(self) -> Workspace:
        """The open documents: the service's once a model is loaded."""
        return self.service.workspace if self.service is not None else self._documents

    def take_pending(self, params, arrive):
        """The Pending made when this request arrived (made now if it had none)."""
        msg_id = self.protocol.msg_id
        pending = self.pending.pop(msg_id, None)
        return pending if pending is not None else arrive(self, msg_id, params)

    def install(self, engine, settings: Settings) -> None:
        """Make a completion service for a loaded engine and move the open documents to it."""
        service = CompletionService(engine, completion_config(settings), workspace=self._documents)
        self._documents = Workspace()
        self.engine, self.service = engine, service

    def unload(self) -> None:
        """Drop the engine and service (documents stay open) before loading another model."""
        if self.service is None:
            return
        self._documents = self.service.workspace   # the open documents and their trees stay
        self._documents.on_close = None
        self.service.close()
        self.engine = self.service = None

    def offers_completion_items(self) -> bool:
        mode = self.settings.completion_items
        if mode != "auto":
            return mode == "always"
        text_document = self.client_capabilities.text_document
        return text_document is None or text_document.inline_completion is None

    def apply_settings(self) -> None:
        """Recompute the settings from the layers and apply what changed."""
        settings, warnings = self.store.settings()
        for warning in warnings:
            log.warning("%s", warning)
        previous, self.settings = self.settings, settings
        logs.setup(settings.log_level)
        if settings.enable != previous.enable:
            self.status.enabled = settings.enable
            status.send(self)
        if self.service is not None:
            try:
                config = completion_config(settings)
                if config != self.service.config:
                    self.service.update_config(config)
            except ValueError as e:
                log.warning("The completion settings were not applied: %s", e)
        if self.initialized:
            self.spawn(ensure_model(self))

    def spawn(self, coroutine) -> asyncio.Task:
        """Run a coroutine on the event loop, keeping a reference until it ends."""
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- pygls hooks -------------------------------------------------------------------------
    def report_server_error(self, error: Exception, source) -> None:
        """Errors outside a request's answer are logged (pygls would pop up a message)."""
        if source is JsonRpcException:  # the read loop: a body that is not a JSON-RPC message
            reply = JsonRpcParseError if isinstance(error, json.JSONDecodeError) else JsonRpcInvalidRequest
            log.warning("An unreadable message was answered with %s: %s", reply.MESSAGE, error)
            # JSON-RPC wants "id": null here; pygls' serializer would leave the id out
            self.protocol._send_data({"jsonrpc": "2.0", "id": None,
                                      "error": {"code": reply.CODE, "message": f"{reply.MESSAGE}: {error}"}})
            return
        if getattr(source, "__name__", "") == "FeatureRequestError":
            return  # already answered with the error, and logged by pygls
        data = getattr(error, "data", None)
        trace = "".join(data.get("traceback", [])) if isinstance(data, dict) else ""
        log.error("%s%s", error, f"\n{trace}" if trace else "")

    def shutdown(self) -> None:
        """End of the connection: stop the worker; never wait for a blocked stdin read."""
        self.worker.stop(timeout=1.0)
        if self.service is not None:
            self.service.close()
        if self._stop_event is not None:
            self._stop_event.set()
        if self._thread_pool is not None:
            self._thread_pool.shutdown(wait=False, cancel_futures=True)
        if self._server is not None:
            self._server.close()


def completion_config(settings: Settings) -> CompletionConfig:
    names = {f.name for f in dataclasses.fields(CompletionConfig)}
    return CompletionConfig(**{k: v for k, v in settings.completion_kwargs().items() if k in names})
