"""Answers without the model: typing-through and the suggestion precomputed after an accept.

    recall.remember(uri, cursor, result)        # what was shown, after every completion
    recall.type_through(uri, cursor)            # the rest of it, if the user typed its start
    snapshot, offset = after_accept(snapshot, suggestion)   # the text an accept makes …
    recall.store(uri, before, after, result)    # … and the suggestion computed for it
    recall.take(uri, cursor)                    # … answered when the request is at that place

Both compare the whole text before and after the cursor, so an answer is only reused when the
document is exactly what it was computed for. Per-document state goes with `forget(uri)`.
"""
from __future__ import annotations

import threading
from dataclasses import replace
from typing import NamedTuple

from completion.document import Lines
from completion.types import CompletionResult, Range, Snapshot, Suggestion
from completion.windows import Cursor


class _Shown(NamedTuple):
    """The suggestion last shown in a document, for typing-through."""

    before: str    # the document's text before the cursor then …
    after: str     # … and after it
    text: str      # the suggestion
    covered: int   # characters of `after` its range replaces
    mode: str


class _Precomputed(NamedTuple):
    """A suggestion computed after an accept, for the text around the cursor it assumed."""

    before: str
    after: str
    result: CompletionResult


class Recall:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._shown: dict[str, _Shown] = {}
        self._precomputed: dict[str, _Precomputed] = {}

    def remember(self, uri: str, cursor: Cursor, result: CompletionResult) -> None:
        """The suggestion now shown in `uri` (none: nothing to type through)."""
        with self._lock:
            if not result.suggestions:
                self._shown.pop(uri, None)
                return
            suggestion = result.suggestions[0]
            covered = len(cursor.lines.text[cursor.offset:cursor.lines.offset(suggestion.range.end)])
            self._shown[uri] = _Shown(cursor.text[:cursor.offset], cursor.text[cursor.offset:],
                                      suggestion.text, covered, result.mode)

    def type_through(self, uri: str, cursor: Cursor) -> CompletionResult | None:
        """The rest of the last suggestion when the user typed its start (or nothing) since."""
        with self._lock:
            shown = self._shown.get(uri)
        if shown is None:
            return None
        before, after = cursor.text[:cursor.offset], cursor.text[cursor.offset:]
        if after != shown.after or not before.startswith(shown.before):
            return None
        typed = before[len(shown.before):]
        rest = shown.text[len(typed):]
        if not shown.text.startswith(typed) or not rest.strip() or rest == after[:shown.covered]:
            return None
        end = cursor.lines.position(cursor.offset + shown.covered)
        suggestion = Suggestion(rest, Range(cursor.lines.position(cursor.offset), end))
        with self._lock:
            self._shown[uri] = _Shown(before, after, rest, shown.covered, shown.mode)
        return CompletionResult([suggestion], shown.mode, "typing-through" if typed else "cache")

    def store(self, uri: str, before: str, after: str, result: CompletionResult) -> None:
        with self._lock:
            self._precomputed[uri] = _Precomputed(before, after, result)

    def take(self, uri: str, cursor: Cursor) -> CompletionResult | None:
        """The suggestion precomputed for `uri`, when this request is exactly at its place."""
        with self._lock:
            stored = self._precomputed.pop(uri, None)
        if stored is None or (stored.before, stored.after) != (cursor.text[:cursor.offset],
                                                               cursor.text[cursor.offset:]):
            return None
        self.remember(uri, cursor, stored.result)
        return replace(stored.result, source="cache", timings_ms={},
                       engine_stats={**stored.result.engine_stats, "cached": True})

    def forget(self, uri: str) -> None:
        with self._lock:
            self._shown.pop(uri, None)
            self._precomputed.pop(uri, None)

    def clear(self) -> None:
        with self._lock:
            self._shown.clear()
            self._precomputed.clear()

    def __len__(self) -> int:
        """Documents with a suggestion to type through."""
        with self._lock:
            return len(self._shown)


def after_accept(snapshot: Snapshot, suggestion: Suggestion) -> tuple[Snapshot, int]:
    """The snapshot once `suggestion` is in, and the offset just after it: what a suggestion
    precomputed after an accept is for.

    The editor may or may not have sent the change yet: if the text is already there, the
    snapshot is used as it is.
    """
    lines = Lines(snapshot.text)
    start = lines.offset(suggestion.range.start, strict=False)
    end = lines.offset(suggestion.range.end, strict=False)
    text, inserted = snapshot.text, suggestion.text
    if text[start:start + len(inserted)] == inserted:
        return snapshot, start + len(inserted)
    return replace(snapshot, text=text[:start] + inserted + text[end:]), start + len(inserted)
