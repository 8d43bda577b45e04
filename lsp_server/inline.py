"""textDocument/inlineCompletion (LSP 3.18): the suggestion as ghost text at the cursor."""
from __future__ import annotations

from lsprotocol import types

from completion.types import Suggestion
from lsp_server.commands import accept_command
from lsp_server.documents import lsp_range
from lsp_server.requests import Ask


def respond(uri: str, suggestions: list[Suggestion]) -> types.InlineCompletionList:
    return types.InlineCompletionList(items=[
        types.InlineCompletionItem(insert_text=s.text, range=lsp_range(s.range), command=accept_command(uri, s))
        for s in suggestions
    ])


def register(server, session) -> None:
    def ask(params: types.InlineCompletionParams) -> Ask:
        """Several only when the user asked (Invoked: a key to trigger or to cycle), at once. Ghost
        text while typing gets the first, after the debounce, and none with `trigger = manual`."""
        settings = session.settings
        if params.context is not None and params.context.trigger_kind == types.InlineCompletionTriggerKind.Invoked:
            return Ask(count=settings.suggestions)
        if settings.trigger == "manual":
            return Ask(skip="manual")
        return Ask(delay=settings.debounce_ms / 1000)

    session.requests.register(server, types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions(),
                              "inline", respond, ask)
