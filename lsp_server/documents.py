"""textDocument/didOpen, didChange, didClose: the open documents, updated at once; and the
conversions between LSP's positions and completion's (both count UTF-16 code units, as the
server announces).

The text lives in the session's completion.Workspace (which keeps each tree-sitter tree
incrementally up to date, for documents up to max_parse_kb); pygls keeps no copy (see
protocol.LatentProtocol).

A didChange with an invalid change keeps its valid ones (messages.split_changes); the
server's copy can no longer be trusted then, so the document is marked diverged
(`session.stale`) and answers nothing until it is opened again or sent whole.

The open documents are bounded (completion.document.Workspace: 2,000 documents, and four
messages of max_message_mb of text in all): a document past the bound is not kept — one logged
sentence (for the first ten; then at debug level), its changes are ignored quietly, and its
completions answer empty with the reason "not-kept" until it closes and opens again. Every
document within the bound is kept whole.
"""
from __future__ import annotations

import logging
import posixpath
import re

from lsprotocol import types
from pygls.uris import to_fs_path

from completion.errors import DocumentLimit, UnknownDocument
from completion.types import Position, Range, TextChange
from lsp_server.loading import ensure_model

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


def diverged(session, uri: str, rejected: list[str], stale: bool) -> None:
    """Some changes of a didChange were left out (each a sentence): log them and, when the
    copy can no longer be trusted, mark the document diverged."""
    for sentence in rejected:
        log.warning("%s", sentence)
    if stale and session.documents.get(uri) is not None and uri not in session.stale:
        session.stale.add(uri)
        log.warning("The server's copy of %s diverged from the editor's; it gets no completions until it is "
                    "reopened or sent whole.", _name(uri))


def register(server, session) -> None:
    @server.feature(types.TEXT_DOCUMENT_DID_OPEN)
    def did_open(params: types.DidOpenTextDocumentParams) -> None:
        doc = params.text_document
        session.stale.discard(doc.uri)
        session.unparsed.discard(doc.uri)
        session.refused.pop(doc.uri, None)
        try:
            document = session.documents.open(doc.uri, doc.language_id, clean(doc.text), doc.version,
                                              path=relative_path(server.workspace, doc.uri))
        except DocumentLimit as e:
            return refuse(session, doc.uri, e)
        _note_size(session, document)
        if session.initialized:      # `latent adapt` may have finished (or forgotten) the workspace's model
            session.spawn(ensure_model(session))

    @server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
    def did_change(params: types.DidChangeTextDocumentParams) -> None:
        doc = params.text_document
        changes = [to_change(c) for c in params.content_changes]
        try:
            session.documents.change(doc.uri, doc.version, changes)
        except UnknownDocument as e:
            log.log(logging.DEBUG if doc.uri in session.refused else logging.WARNING, "%s The change is ignored.", e)
            return
        except DocumentLimit as e:
            return refuse(session, doc.uri, e)
        if any(change.range is None for change in changes):
            session.stale.discard(doc.uri)   # the whole text: the copy is the editor's again
        _note_size(session, session.documents.get(doc.uri))

    @server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
    def did_close(params: types.DidCloseTextDocumentParams) -> None:
        session.close_document(params.text_document.uri)


LOGGED_REFUSALS = 10   # documents not kept that are logged as warnings; later ones at debug level


def refuse(session, uri: str, error: DocumentLimit) -> None:
    """A document past the bound: drop what is kept of it, and remember it (as many as the bound
    holds documents) so that its requests say why they answer nothing."""
    session.close_document(uri)
    level = logging.WARNING if len(session.refused) < LOGGED_REFUSALS else logging.DEBUG
    log.log(level, "%s", error)
    session.refused[uri] = None
    if len(session.refused) > session.documents.max_documents:
        del session.refused[next(iter(session.refused))]


def _note_size(session, document) -> None:
    """Say once (per opening) that a document is too large to parse."""
    if document.language is None or document.parseable:   # told without parsing: that waits for a request
        session.unparsed.discard(document.uri)
    elif document.uri not in session.unparsed:
        session.unparsed.add(document.uri)
        log.info("%s has %d characters, more than max_parse_kb (%d KiB) allows to parse: completions there see "
                 "its text only.", _name(document.uri), len(document.text), document.max_parse_chars >> 10)


def _name(uri: str) -> str:
    return uri.rsplit("/", 1)[-1] or uri
