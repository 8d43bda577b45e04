"""textDocument/completion, for clients without inline completion: one item whose textEdit
inserts the suggestion, labelled with its first line.

With `completion_items = "auto"` the provider is advertised only to clients that do not
declare inline completion (see server.LatentProtocol.lsp_initialize); "always" and "never"
force it on or off.
"""
from __future__ import annotations

from lsprotocol import types

from completion.types import Suggestion
from lsp_server import completions

METHOD = types.TEXT_DOCUMENT_COMPLETION
LABEL_CHARS = 80


def arrive(ls, request_id, params: types.CompletionParams) -> completions.Pending:
    if ls.settings.completion_items == "never":
        return completions.skipped(request_id, "completion", params.text_document.uri, params.position, "items are off")
    return completions.arrive(ls, request_id, "completion", params.text_document.uri, params.position)


def item(uri: str, suggestion: Suggestion) -> types.CompletionItem:
    text = suggestion.text
    multiline = "\n" in text.rstrip("\r\n")
    return types.CompletionItem(
        label=label(text), kind=types.CompletionItemKind.Text, detail="Latent",
        documentation=text if multiline else None,
        text_edit=types.TextEdit(completions.to_range(suggestion), text),
        insert_text_format=types.InsertTextFormat.PlainText, sort_text="0", preselect=True,
        command=completions.accept_command(uri, suggestion),
    )


def label(text: str) -> str:
    """The first line with something on it, shortened to LABEL_CHARS."""
    first = next((line for line in text.splitlines() if line.strip()), text.strip())
    return first if len(first) <= LABEL_CHARS else first[:LABEL_CHARS - 1] + "…"


def register(server) -> None:
    @server.feature(METHOD, types.CompletionOptions(resolve_provider=False))
    async def completion(ls, params: types.CompletionParams) -> types.CompletionList:
        pending = ls.take_pending(params, arrive)
        suggestions = await completions.finish(ls, pending)
        return types.CompletionList(is_incomplete=True, items=[item(pending.uri, s) for s in suggestions])

    server.arrivals[METHOD] = arrive
