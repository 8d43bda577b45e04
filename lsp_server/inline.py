"""textDocument/inlineCompletion (LSP 3.18): the suggestion as ghost text at the cursor."""
from __future__ import annotations

from lsprotocol import types

from lsp_server import completions

METHOD = types.TEXT_DOCUMENT_INLINE_COMPLETION


def arrive(ls, request_id, params: types.InlineCompletionParams) -> completions.Pending:
    return completions.arrive(ls, request_id, "inline", params.text_document.uri, params.position)


def register(server) -> None:
    @server.feature(METHOD, types.InlineCompletionOptions())
    async def inline_completion(ls, params: types.InlineCompletionParams) -> types.InlineCompletionList:
        pending = ls.take_pending(params, arrive)
        suggestions = await completions.finish(ls, pending)
        return types.InlineCompletionList(items=[
            types.InlineCompletionItem(
                insert_text=s.text, range=completions.to_range(s),
                command=completions.accept_command(pending.uri, s))
            for s in suggestions
        ])

    server.arrivals[METHOD] = arrive
