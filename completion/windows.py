"""The cursor and the windows of text around it that fit a token budget.

`Cursor` works out once the coordinates every stage needs; `choose_windows` cuts the prefix and
suffix windows at line boundaries under a token budget (about ¾ prefix, ¼ suffix; what one side
cannot use goes to the other); `TokenCounter` caches per-line token counts.

A window is cut by characters before it is tokenized: at most `max_chars(budget)`, budget ×
MAX_CHARS_PER_TOKEN, so what a completion costs is bounded by its budget, not by its document's
longest line (a 7.65 MB line took 9.6 s to tokenize, holding the interpreter lock all along).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from completion.document import Lines, lf, utf8_length

Count = Callable[[str], int]  # tokens of a piece of text
# Generous: code averages 3-4 characters a token; only runs of one character (spaces, "#", "=")
# pack more, and a line of them cut shorter than it could be loses nothing worth reading.
MAX_CHARS_PER_TOKEN = 16


def max_chars(budget: int) -> int:
    """The most characters a text of `budget` tokens is read from."""
    return max(budget, 0) * MAX_CHARS_PER_TOKEN

# ---------------------------------------------------------------------------------------------
# The cursor

class Cursor:
    """The cursor in one snapshot, with the coordinates every stage needs worked out once."""

    __slots__ = ("text", "lines", "offset", "line", "line_start", "line_end", "byte")

    def __init__(self, lines: Lines, offset: int) -> None:
        self.text = lines.text
        self.lines = lines
        self.offset = offset
        self.line = lines.position(offset).line
        self.line_start = lines.starts[self.line]
        self.line_end = lines.line_end(self.line)
        self.byte = utf8_length(self.text[:offset])

    @property
    def head(self) -> str:
        """The cursor's line before the cursor."""
        return self.text[self.line_start:self.offset]

    @property
    def tail(self) -> str:
        """The cursor's line after the cursor."""
        return self.text[self.offset:self.line_end]

    def next_line(self) -> str | None:
        """The first non-blank line after the cursor's line."""
        for line in range(self.line + 1, self.lines.count):
            text = self.lines.line_text(line)
            if text.strip():
                return text
        return None


def indentation(line: str) -> str:
    """The line's leading blanks (spaces and tabs)."""
    return line[:len(line) - len(line.lstrip(" \t"))]


def indent_width(line: str) -> int:
    """Columns of leading whitespace (a tab counts four)."""
    return len(indentation(line).expandtabs(4))



# ---------------------------------------------------------------------------------------------
# 2. Windows

MEMO_CHARS = 2048   # longer texts are not memoised: 16,384 whole prompts would be ~150 MB

class TokenCounter:
    """Token counts of text pieces, memoised up to MEMO_CHARS characters (lines rarely change
    between keystrokes; a whole prompt changes on every one, and the tokenizer encodes it again
    only from near the change); `chars` counts the characters counted here, the work asked."""

    def __init__(self, count: Count, max_entries: int = 16384) -> None:
        self._count = count
        self._memo: dict[str, int] = {}
        self._max = max_entries
        self.chars = 0
        self.seconds = 0.0   # spent in the tokenizer

    def __call__(self, text: str) -> int:
        if not text:
            return 0
        if len(text) > MEMO_CHARS:
            return self._counted(text)
        tokens = self._memo.get(text)
        if tokens is None:
            tokens = self._counted(text)
            if len(self._memo) >= self._max:
                self._memo.clear()
            self._memo[text] = tokens
        return tokens

    def _counted(self, text: str) -> int:
        self.chars += len(text)
        started = time.perf_counter()
        tokens = self._count(lf(text))
        self.seconds += time.perf_counter() - started
        return tokens


@dataclass(frozen=True)
class Windows:
    start: int           # str offset where the prefix window starts
    end: int             # str offset where the suffix window ends
    prefix_tokens: int
    suffix_tokens: int
    first_line: int      # first and last lines the windows touch
    last_line: int


def choose_windows(cursor: Cursor, budget: int, prefix_fraction: float, count: Count) -> Windows:
    """The widest prefix/suffix windows within `budget` tokens, whole lines but the cursor's."""
    prefix_share = int(budget * prefix_fraction)
    start, prefix_tokens = _prefix_window(cursor, prefix_share, count)
    end, suffix_tokens = _suffix_window(cursor, budget - prefix_tokens, count)
    if suffix_tokens < budget - prefix_share:  # the suffix left room: let the prefix grow
        start, prefix_tokens = _prefix_window(cursor, budget - suffix_tokens, count)
    lines = cursor.lines
    return Windows(start, end, prefix_tokens, suffix_tokens,
                   lines.position(start).line, lines.position(end).line)


def _prefix_window(cursor: Cursor, budget: int, count: Count) -> tuple[int, int]:
    limit = max_chars(budget)
    start = max(cursor.line_start, cursor.offset - limit)
    head = cursor.text[start:cursor.offset]
    used = count(head)
    if used > budget:
        cut = _longest_fitting_end(head, budget, count)
        return start + cut, count(head[cut:])
    if start > cursor.line_start:   # the line goes on past what the budget can hold
        return start, used
    starts = cursor.lines.starts
    for line in range(cursor.line - 1, -1, -1):
        if cursor.offset - starts[line] > limit:
            break
        tokens = count(cursor.text[starts[line]:starts[line + 1]])
        if used + tokens > budget:
            break
        used += tokens
        start = starts[line]
    return start, used


def _suffix_window(cursor: Cursor, budget: int, count: Count) -> tuple[int, int]:
    limit = max_chars(budget)
    end = min(cursor.line_end, cursor.offset + limit)
    tail = cursor.text[cursor.offset:end]
    used = count(tail)
    if used > budget:
        cut = _longest_fitting_start(tail, budget, count)
        return cursor.offset + cut, count(tail[:cut])
    if end < cursor.line_end:
        return end, used
    lines = cursor.lines
    for line in range(cursor.line + 1, lines.count):
        line_end = lines.line_end(line)
        if line_end - cursor.offset > limit:
            break
        tokens = count(cursor.text[end:line_end])
        if used + tokens > budget:
            break
        used += tokens
        end = line_end
    return end, used


def _longest_fitting_end(text: str, budget: int, count: Count) -> int:
    """The smallest cut such that text[cut:] fits in `budget` tokens (binary search)."""
    low, high = 0, len(text)
    while low < high:
        middle = (low + high) // 2
        if count(text[middle:]) <= budget:
            high = middle
        else:
            low = middle + 1
    return low


def _longest_fitting_start(text: str, budget: int, count: Count) -> int:
    """The largest cut such that text[:cut] fits in `budget` tokens (binary search)."""
    low, high = 0, len(text)
    while low < high:
        middle = (low + high + 1) // 2
        if count(text[:middle]) <= budget:
            low = middle
        else:
            high = middle - 1
    return low
