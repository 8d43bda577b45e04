"""Language-aware work around the model: from "the cursor is here" to "show this text".

    service = CompletionService(engine)
    service.workspace.open(uri, "python", text, version=1, path="pkg/mod.py")
    result = service.complete(service.workspace.snapshot(uri), Position(3, 8))

Modules, in the order a request meets them: `document` (text, UTF-16 positions, incremental
tree-sitter trees), `languages` (grammars and per-language rules as data), `context` (mode,
token-budgeted windows, related snippets), `prompt` (FIM formats), `postprocess` (what to keep
of the model's answer), `cache` (the LRU of recent answers), `config` (what the pipeline is
asked to do) and `service` (the wiring).
Nothing here knows about LSP or torch; the model is reached through `model.protocol` only.
"""
from completion.document import Document, Workspace
from completion.errors import InvalidPosition, UnknownDocument
from completion.config import CompletionConfig
from completion.service import CompletionService

__all__ = [
    "CompletionConfig",
    "CompletionService",
    "Document",
    "InvalidPosition",
    "UnknownDocument",
    "Workspace",
]
