"""Plain data exchanged between the language server and the completion pipeline.

Positions follow LSP: 0-based line, and `character` counted in UTF-16 code units.
The pipeline never sees LSP objects; the server converts at its edge.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Position:
    line: int
    character: int  # UTF-16 code units


@dataclass(frozen=True)
class Range:
    start: Position
    end: Position


@dataclass(frozen=True)
class TextChange:
    """One LSP content change: `range` None means the whole text is replaced."""

    text: str
    range: Range | None = None


@dataclass(frozen=True)
class Snapshot:
    """An immutable view of one open document at one version."""

    uri: str
    language_id: str
    text: str
    version: int
    path: str | None = None  # path relative to the workspace root, for the prompt's header


@dataclass(frozen=True)
class Suggestion:
    """Text to show at the cursor; `range` is the span it replaces (empty = pure insert)."""

    text: str
    range: Range


# Why a completion has no suggestion: a stable code (counted in the stats) and the sentence a
# user is shown (status bars, `latent complete -v`, the REPL).
REASONS = {
    "inside-word": "The cursor is inside a word.",
    "code-follows": "Code follows the cursor on its line.",
    "body-written": "The block's body is already written.",
    "language-disabled": "Completion is turned off for this language.",
    "language-untrained": "The model was not trained on this language (the setting all_languages turns it on).",
    "nothing": "The model suggested nothing here.",
    "suffix-repeat": "The suggestion only repeated the text after the cursor.",
    "repetition": "The suggestion repeated itself.",
    "echo": "The suggestion only repeated the text before the cursor.",
    "syntax-error": "The suggestion would have introduced a syntax error.",
    "cancelled": "A newer keystroke replaced this request.",
    # the server's, before the pipeline runs
    "loading": "The model is still loading.",
    "load-failed": "The model did not load; the log says why.",
    "off": "Latent is turned off (latent.toggle).",
    "snoozed": "Latent is snoozed for a while (latent.toggle).",
    "manual": "Suggestions come only when you ask (trigger = manual).",
    "diverged": "The server's copy of this document diverged from the editor's; reopen the document.",
    "not-kept": "The server keeps no more open documents (the log says which bound); close some and reopen this one.",
}


@dataclass
class CompletionResult:
    suggestions: list[Suggestion] = field(default_factory=list)
    mode: str = "none"                # "none" | "line" | "block"
    source: str = "model"             # "model" | "typing-through" | "cache" | "skipped" | "cancelled"
    timings_ms: dict[str, float] = field(default_factory=dict)  # parse, context, prompt, engine, postprocess
    engine_stats: dict = field(default_factory=dict)            # GenerationStats.as_dict()
    reason: str = ""                  # no suggestion: a key of REASONS
    parts_ms: dict[str, float] = field(default_factory=dict)    # within the stages: tokenize, queries
