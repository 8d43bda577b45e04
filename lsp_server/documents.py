"""textDocument/didOpen, didChange, didClose: the open documents, updated at once; and the
conversions between LSP's positions and completion's (both count UTF-16 code units, as the
server announces).

The text lives in the session's completion.Workspace (which keeps each tree-sitter tree
incrementally up to date); pygls keeps no copy (see protocol.LatentProtocol).
"""
from __future__ import annotations

import logging
import posixpath
import re

from lsprotocol import types
from pygls.uris import to_fs_path

from completion.errors import UnknownDocument
from completion.types import Position, Range, TextChange

log = logging.getLogger(__name__)
_SURROGATE = re.compile("[\ud800-\udfff]")


def clean(text: str) -> str:
    """JSON may carry lone UTF-16 surrogates ("\\ud800"); they become U+FFFD, which has the
    same UTF-16 length, so positions stay put and every later stage sees valid Unicode."""
    return _SURROGATE.sub("\ufffd", text) if _SURROGATE.search(text) else text


def to_range(r: types.Range) -> Range:
    return Range(Position(r.start.line, r.start.character), Position(r.end.line, r.end.character))


def lsp_range(r: Range) -> types.Range:
    return types.Range(types.Position(r.start.line, r.start.character), types.Position(r.end.line, r.end.character))


def to_change(change) -> TextChange:
    r = getattr(change, "range", None)
    return TextChange(clean(change.text), None if r is None else to_range(r))


def relative_path(workspace, uri: str) -> str | None:
    """The document's path inside the workspace folder holding it (for the prompt's header)."""
    path = to_fs_path(uri)
    if not path:
        return None
    path = path.replace("\\", "/")
    roots = [to_fs_path(folder.uri) for folder in workspace.folders.values()]
    if workspace.root_path:
        roots.append(workspace.root_path)
    best = None
    for root in filter(None, roots):
        root = root.replace("\\", "/").rstrip("/")
        if path.startswith(root + "/") and (best is None or len(root) > len(best)):
            best = root
    return posixpath.relpath(path, best) if best else None


def register(server, session) -> None:
    @server.feature(types.TEXT_DOCUMENT_DID_OPEN)
    def did_open(params: types.DidOpenTextDocumentParams) -> None:
        doc = params.text_document
        session.documents.open(doc.uri, doc.language_id, clean(doc.text), doc.version,
                               path=relative_path(server.workspace, doc.uri))

    @server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
    def did_change(params: types.DidChangeTextDocumentParams) -> None:
        doc = params.text_document
        try:
            session.documents.change(doc.uri, doc.version, [to_change(c) for c in params.content_changes])
        except UnknownDocument as e:
            log.warning("%s The change is ignored.", e)

    @server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
    def did_close(params: types.DidCloseTextDocumentParams) -> None:
        session.close_document(params.text_document.uri)
