"""pygls' LanguageServerProtocol, changed through its public methods only.

1. messages come in through `receive` (from transport.serve), which decodes each body strictly
   and checks it before pygls structures it (messages.py): invalid UTF-8 or JSON is a
   ParseError, a message that is no JSON-RPC request an InvalidRequest (id null when the id
   itself is unusable), a position that is not two whole numbers or command arguments that are
   not an array InvalidParams; a request whose params cannot be read is answered with
   InvalidParams (MethodNotFound for a method the server does not serve). A notification is
   never answered: its problems are logged;
2. the lifecycle: a request before `initialize` is answered with ServerNotInitialized, a second
   `initialize` or any request after `shutdown` with InvalidRequest; notifications then are
   dropped, but `exit`;
3. positions are always UTF-16 (completion's documents count in UTF-16 code units), and the
   completion provider is advertised as completion_list.offered says (`lsp_initialize`);
4. a background request (requests.py) takes its snapshot as it is dispatched, before any
   later message is read, and $/cancelRequest reaches its job (`handle_message`);
5. didOpen / didChange / didClose go straight to our handlers: pygls keeps no second copy of
   the text (the builtin `lsp_text_document__did_*` methods are replaced); a didChange keeps
   its valid changes when one is invalid, and the document is then marked diverged;
6. workspace/executeCommand checks the arguments against the command's signature and awaits
   async commands itself (pygls' generator dispatch would keep a future per call).
"""
from __future__ import annotations

import inspect
import json
import logging
from typing import TYPE_CHECKING, Any

from lsprotocol import types
from pygls.exceptions import (
    JsonRpcException,
    JsonRpcInvalidParams,
    JsonRpcInvalidRequest,
    JsonRpcMethodNotFound,
    JsonRpcParseError,
    JsonRpcServerNotInitialized,
)
from pygls.protocol import LanguageServerProtocol
from pygls.protocol.json_rpc import RPCMessage, RPCNotification, RPCRequest
from pygls.protocol.language_server import lsp_method

from lsp_server import completion_list, documents, messages
from lsp_server.transport import Oversized

if TYPE_CHECKING:
    from lsp_server.session import Session

log = logging.getLogger(__name__)


class Unreadable:
    """A request whose params could not be read: it is answered with `error`."""

    def __init__(self, msg_id, error: JsonRpcException) -> None:
        self.id, self.error = msg_id, error


class LatentProtocol(LanguageServerProtocol):
    session: Session   # the server's Session (server.create sets it)

    @lsp_method(types.INITIALIZE)
    def lsp_initialize(self, params: types.InitializeParams):
        if params.capabilities.general is not None:
            params.capabilities.general.position_encodings = [types.PositionEncodingKind.Utf16]
        result = yield from super().lsp_initialize(params)
        if not completion_list.offered(self.session.settings, params.capabilities):
            result.capabilities.completion_provider = None
        return result

    # -- messages ------------------------------------------------------------------------------
    phase = "new"   # "running" once initialize is read, "down" once shutdown is

    def receive(self, body: bytes) -> None:
        """One message's bytes, from the transport: checked, structured and dispatched."""
        try:
            data = json.loads(body.decode("utf-8"), parse_constant=_no_constant)
        except UnicodeDecodeError:
            return self.refuse_unreadable(JsonRpcParseError("Parse error: the message is not valid UTF-8."))
        except (ValueError, RecursionError) as e:
            return self.refuse_unreadable(JsonRpcParseError(f"Parse error: the message is not JSON ({e})."))
        kind, msg_id, problem = messages.classify(data)
        if kind == "invalid":
            return self.refuse_unreadable(JsonRpcInvalidRequest(problem))
        method = data.get("method")
        if problem is not None:
            return self.answer_error(kind, msg_id, method, JsonRpcInvalidRequest(problem))
        if kind != "response" and (refusal := self.lifecycle(method)) is not None:
            return self.answer_error(kind, msg_id, method, refusal, quiet=True)
        rejected, diverged = [], False
        if method == types.TEXT_DOCUMENT_DID_CHANGE:
            data, rejected, diverged = messages.split_changes(data)
        elif kind != "response" and (problem := messages.bad_params(method, data.get("params"))) is not None:
            return self.answer_error(kind, msg_id, method, JsonRpcInvalidParams(problem))
        self.dispatch(kind, data)
        if rejected or diverged:
            documents.diverged(self.session, data["params"]["textDocument"]["uri"], rejected, diverged)

    def dispatch(self, kind: str, data: dict) -> None:
        """Structure a checked message and hand it to pygls (with our handle_message)."""
        try:
            message = self.structure_message(data)
        except JsonRpcException:   # a notification or response whose params cannot be read
            log.warning("The %s %s could not be read and is ignored.", kind, data.get("method") or data.get("id"))
            return
        if data.get("method") == types.INITIALIZE and not isinstance(message, Unreadable):
            self.phase = "running"
        elif data.get("method") == types.SHUTDOWN:
            self.phase = "down"
        try:
            self.handle_message(message)
        except Exception:   # pygls answers a request's errors; anything else is a bug, logged
            log.exception("The %s %s failed.", kind, data.get("method"))

    def lifecycle(self, method: str) -> JsonRpcException | None:
        """Why the server cannot take `method` now (None: it can)."""
        if method == types.EXIT:
            return None
        if self.phase == "new" and method != types.INITIALIZE:
            return JsonRpcServerNotInitialized("The server is not initialized: the client must send initialize first.")
        if self.phase != "new" and method == types.INITIALIZE:
            return JsonRpcInvalidRequest("The server is already initialized: initialize is sent once.")
        if self.phase == "down":
            return JsonRpcInvalidRequest("The server is shutting down: it takes only exit now.")
        return None

    def answer_error(self, kind: str, msg_id, method, error: JsonRpcException, quiet: bool = False) -> None:
        """A request is answered with `error`; a notification never is: its error is logged
        (at debug level when `quiet`: one the lifecycle drops)."""
        if kind == "request":
            log.warning("Request %s (%s): %s", msg_id, method, error.message)
            self.send_error(msg_id, error)
        else:
            log.log(logging.DEBUG if quiet else logging.WARNING, "The %s %s is ignored: %s", kind, method or msg_id,
                    error.message)

    def refuse_unreadable(self, error: JsonRpcException) -> None:
        log.warning("An unreadable message was answered with %s", error.message)
        self.send_error(None, error)

    def refuse_oversized(self, oversized: Oversized) -> None:
        """A body the transport skipped unread for its size: its request is answered."""
        if oversized.msg_id is not None:
            limit = self.session.settings.max_message_mb
            self.send_error(oversized.msg_id, JsonRpcInvalidRequest(
                f"The message is {oversized.size} bytes, more than max_message_mb ({limit} MiB) allows; "
                "it was not read."))

    def structure_message(self, data: dict[str, Any]) -> RPCMessage | Unreadable:
        """pygls' message for `data`, which messages.classify has checked; a request whose params
        cannot be read is Unreadable."""
        try:
            message = super().structure_message(data)
        except JsonRpcException:
            if "id" not in data or "method" not in data:
                raise
            method = data["method"]
            if method not in self.fm.features and method not in self.fm.builtin_features:
                return Unreadable(data["id"], JsonRpcMethodNotFound.of(method))
            return Unreadable(data["id"], JsonRpcInvalidParams(f"The params of {method} could not be read."))
        assert not isinstance(message, dict), "pygls leaves only a message without jsonrpc unstructured"
        # lsprotocol's ResponseErrorMessage has an optional id, which pygls' RPCError protocol lacks
        return message  # pyright: ignore[reportReturnType]

    def handle_message(self, message: RPCMessage | Unreadable) -> None:
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
        """Answer `msg_id` (None: a message whose id could not be read) with `error`."""
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


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")
