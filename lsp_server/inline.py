"""textDocument/inlineCompletion (LSP 3.18): the suggestion as ghost text at the cursor."""
from __future__ import annotations

from lsprotocol import types

from completion.types import Suggestion
from lsp_server.commands import accept_command
from lsp_server.documents import lsp_range


def respond(uri: str, suggestions: list[Suggestion]) -> types.InlineCompletionList:
    return types.InlineCompletionList(items=[
        types.InlineCompletionItem(insert_text=s.text, range=lsp_range(s.range), command=accept_command(uri, s))
        for s in suggestions
    ])


def register(server, session) -> None:
    session.requests.register(server, types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions(),
                              "inline", respond)
