"""pygls' LanguageServerProtocol, changed through its public methods only.

1. positions are always UTF-16 (completion's documents count in UTF-16 code units), and the
   completion provider is advertised as completion_list.offered says (`lsp_initialize`);
2. a background request (requests.py) takes its snapshot as it is dispatched, before any
   later message is read, whatever the transport, and $/cancelRequest reaches its job
   (`handle_message`): pygls starts an async handler only when the event loop next gets
   control, which on a stream holding several messages is after the didChange that follows;
3. didOpen / didChange / didClose go straight to our handlers: pygls keeps no second copy of
   the text (the builtin `lsp_text_document__did_*` methods are replaced);
4. workspace/executeCommand checks the arguments against the command's signature and awaits
   async commands itself (pygls' generator dispatch would keep a future per call);
5. a request whose params cannot be read is answered with InvalidParams (MethodNotFound for a
   method the server does not serve), and a body that is not a JSON-RPC message with a
   ParseError or InvalidRequest whose "id" is null (LatentServer.report_server_error):
   pygls drops the first and would leave the id out of the second, so both are written to
   the transport here (`send_error`).
"""
from __future__ import annotations

import inspect
import json
import logging

from lsprotocol import types
from pygls.exceptions import JsonRpcException, JsonRpcInvalidParams, JsonRpcMethodNotFound
from pygls.protocol import LanguageServerProtocol
from pygls.protocol.json_rpc import RPCNotification, RPCRequest
from pygls.protocol.language_server import lsp_method

from lsp_server import completion_list

log = logging.getLogger(__name__)


class Unreadable:
    """A request whose params could not be read: it is answered with `error`."""

    def __init__(self, msg_id, error: JsonRpcException) -> None:
        self.id, self.error = msg_id, error


class LatentProtocol(LanguageServerProtocol):
    session = None   # the server's Session (server.create sets it)

    @lsp_method(types.INITIALIZE)
    def lsp_initialize(self, params: types.InitializeParams):
        if params.capabilities.general is not None:
            params.capabilities.general.position_encodings = [types.PositionEncodingKind.Utf16]
        result = yield from super().lsp_initialize(params)
        if not completion_list.offered(self.session.settings, params.capabilities):
            result.capabilities.completion_provider = None
        return result

    # -- messages ------------------------------------------------------------------------------
    def structure_message(self, data):
        try:
            return super().structure_message(data)
        except JsonRpcException:
            if "id" not in data or "method" not in data:
                raise
            method = data["method"]
            if method not in self.fm.features and method not in self.fm.builtin_features:
                return Unreadable(data["id"], JsonRpcMethodNotFound.of(method))
            return Unreadable(data["id"], JsonRpcInvalidParams(f"The params of {method} could not be read."))

    def handle_message(self, message):
        if isinstance(message, Unreadable):
            log.warning("Request %s: %s", message.id, message.error.message)
            self.send_error(message.id, message.error)
            return
        if getattr(message, "jsonrpc", None) == self.VERSION:
            if isinstance(message, RPCRequest):
                self.session.requests.arrive(message.id, message.method, message.params)
            elif isinstance(message, RPCNotification) and message.method == types.CANCEL_REQUEST:
                self.session.requests.cancel(message.params.id)
        super().handle_message(message)

    def send_error(self, msg_id, error: JsonRpcException) -> None:
        """Answer `msg_id` (None: a message that could not be read at all) with `error`."""
        if self.writer is None:
            return
        body = json.dumps({"jsonrpc": self.VERSION, "id": msg_id,
                           "error": {"code": error.code, "message": error.message}}).encode(self.CHARSET)
        self.writer.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)

    # -- documents -----------------------------------------------------------------------------
    def notify_documents(self, method: str, params) -> None:
        handler = self.fm.features.get(method)
        if handler is not None:
            handler(params)

    @lsp_method(types.TEXT_DOCUMENT_DID_OPEN)
    def lsp_text_document__did_open(self, params):
        self.notify_documents(types.TEXT_DOCUMENT_DID_OPEN, params)

    @lsp_method(types.TEXT_DOCUMENT_DID_CHANGE)
    def lsp_text_document__did_change(self, params):
        self.notify_documents(types.TEXT_DOCUMENT_DID_CHANGE, params)

    @lsp_method(types.TEXT_DOCUMENT_DID_CLOSE)
    def lsp_text_document__did_close(self, params):
        self.notify_documents(types.TEXT_DOCUMENT_DID_CLOSE, params)

    # -- commands ------------------------------------------------------------------------------
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
