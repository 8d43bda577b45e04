"""textDocument/completion, for clients without inline completion: one item whose textEdit
inserts the suggestion, labelled with its first line.

With `completion_items = "auto"` the provider is advertised only to clients that do not
declare inline completion (see `offered`, read by the protocol's initialize); "always" and
"never" force it on or off.
"""
from __future__ import annotations

from lsprotocol import types

from completion.types import Suggestion
from lsp_server.commands import accept_command
from lsp_server.documents import lsp_range
from lsp_server.requests import Ask

LABEL_CHARS = 80


def offered(settings, capabilities: types.ClientCapabilities) -> bool:
    """Whether to advertise the completion provider to a client with these capabilities."""
    if settings.completion_items != "auto":
        return settings.completion_items == "always"
    text_document = capabilities.text_document
    return text_document is None or text_document.inline_completion is None


def respond(uri: str, suggestions: list[Suggestion]) -> types.CompletionList:
    return types.CompletionList(is_incomplete=True, items=[item(uri, s, rank) for rank, s in enumerate(suggestions)])


def item(uri: str, suggestion: Suggestion, rank: int = 0) -> types.CompletionItem:
    """One suggestion as an item; the best (rank 0) sorts first and is preselected."""
    text = suggestion.text
    multiline = "\n" in text.rstrip("\r\n")
    return types.CompletionItem(
        label=label(text), kind=types.CompletionItemKind.Text, detail="Latent",
        documentation=text if multiline else None,
        text_edit=types.TextEdit(lsp_range(suggestion.range), text),
        insert_text_format=types.InsertTextFormat.PlainText, sort_text=str(rank), preselect=rank == 0,
        command=accept_command(uri, suggestion),
    )


def label(text: str) -> str:
    """The first line with something on it, shortened to LABEL_CHARS."""
    first = next((line for line in text.splitlines() if line.strip()), text.strip())
    return first if len(first) <= LABEL_CHARS else first[:LABEL_CHARS - 1] + "…"


def register(server, session) -> None:
    def ask(params) -> Ask:
        if session.settings.completion_items == "never":
            return Ask(skip="items are off")
        return Ask(count=session.settings.suggestions)

    session.requests.register(server, types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions(resolve_provider=False),
                              "completion", respond, ask)
