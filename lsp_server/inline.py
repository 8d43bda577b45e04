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
    def count(params: types.InlineCompletionParams) -> int:
        """Several only when the user asked (Invoked: a key to trigger or to cycle); ghost text
        while typing gets the first, as fast as ever."""
        invoked = params.context is not None and params.context.trigger_kind == types.InlineCompletionTriggerKind.Invoked
        return session.settings.suggestions if invoked else 1

    session.requests.register(server, types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions(),
                              "inline", respond, count=count)
