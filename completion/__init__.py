"""Language-aware work around the model: from "the cursor is here" to "show this text".

    service = CompletionService(engine)
    service.workspace.open(uri, "python", text, version=1, path="pkg/mod.py")
    result = service.complete(service.workspace.snapshot(uri), Position(3, 8))

Modules, in the order a request meets them:
- `document` — text, UTF-16 positions, incremental tree-sitter trees; `types`, `errors`;
- `languages` — grammars and per-language rules as data;
- `gate` — whether a request is completed at all (its language; `skip_reason` with no engine);
- `recall` — answers without the model (typing-through, the suggestion precomputed after an accept);
- `context` — the mode (none / line / block), built from `windows` (the cursor, token-budgeted
  windows) and `related` (snippets of definitions and other open documents);
- `prompt` — the FIM prompt in the model family's format and layout (model/fim.py);
- `generation` — the request's limits and stops, and the engine's answer (or the LRU's, `cache`);
  `alternatives` — more suggestions branching from the same prompt;
- `postprocess` — what to keep of the model's answer;
- `config` — what the pipeline is asked to do; `service` — the wiring.
Nothing here knows about LSP or torch; the model is reached through `model.protocol` only.
"""
from completion.config import CompletionConfig
from completion.document import Document, Workspace
from completion.errors import DocumentLimit, InvalidPosition, UnknownDocument
from completion.gate import skip_reason
from completion.service import CompletionService

__all__ = [
    "CompletionConfig",
    "CompletionService",
    "Document",
    "DocumentLimit",
    "InvalidPosition",
    "UnknownDocument",
    "Workspace",
    "skip_reason",
]
