"""What the model is shown, decided before any model work.

1. `decide_mode`: tree-sitter decides *whether* and *how much* to complete —
   "none" (the cursor is inside a word, code follows it on its line, or it ends a block header
   whose body is written), "block" (an empty body after a block opener: `def …:`, `{`, `=>`,
   `then` …), else "line" (the rest of the line; at the end of a written line, the next one).
2. `choose_windows`: prefix and suffix windows cut at line boundaries under a token budget
   (about ¾ prefix, ¼ suffix; what one side cannot use goes to the other).
3. `related_snippets`: under their own budget, definitions of identifiers used near the cursor
   (tree-sitter definition queries over the open documents), then windows of other open
   documents ranked by identifier overlap (Jaccard) with the text around the cursor.
"""
from __future__ import annotations

import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Callable, NamedTuple, Sequence

import tree_sitter

from completion.document import Lines, utf8_length
from completion.languages import LanguageSpec

Count = Callable[[str], int]  # tokens of a piece of text

# What may follow the cursor on its line for a completion to make sense there: closing
# brackets and quotes (they are kept, or replaced by a suggestion that includes them) and
# statement punctuation.
_TAIL_ALLOWED = frozenset(")]}>\"'`;,: \t")


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


def indent_width(line: str) -> int:
    """Columns of leading whitespace (a tab counts four)."""
    stripped = line.lstrip(" \t")
    return len(line[:len(line) - len(stripped)].expandtabs(4))


# ---------------------------------------------------------------------------------------------
# 1. The mode

def decide_mode(language: LanguageSpec | None, tree: tree_sitter.Tree | None, cursor: Cursor,
                multiline: bool = True) -> str:
    """"none", "line" or "block" for a completion at `cursor`."""
    head, tail = cursor.head, cursor.tail
    if _inside_word(tree, cursor):
        return "none"
    if not set(tail) <= _TAIL_ALLOWED:
        return "none"  # code follows the cursor on its line
    if language is None or tree is None:
        return "line"
    opener = block_opener(language, tree, cursor)
    if opener is not None:
        if tail.strip() or _body_is_empty(cursor, indent_width(cursor.lines.line_text(opener))):
            return "block" if multiline else "line"
        if head.strip():
            return "none"  # the cursor ends a header whose body is already written
    return "line"


def _inside_word(tree: tree_sitter.Tree | None, cursor: Cursor) -> bool:
    head, tail = cursor.head, cursor.tail
    if head[-1:].isalnum() or head[-1:] == "_":
        if tail[:1].isalnum() or tail[:1] == "_":
            return True
    if tree is None or cursor.byte == 0:
        return False
    node = tree.root_node.descendant_for_byte_range(cursor.byte, cursor.byte)
    return (node is not None and node.child_count == 0 and node.is_named
            and node.start_byte < cursor.byte < node.end_byte)


def block_opener(language: LanguageSpec, tree: tree_sitter.Tree, cursor: Cursor) -> int | None:
    """The line whose last token opens an (empty) body the cursor is at, or None.

    That line is the cursor's own line when text precedes the cursor, otherwise the nearest
    non-blank line above (the cursor sits on a blank line inside the body).
    """
    if cursor.head.strip():
        line, end = cursor.line, cursor.offset
    else:
        line = _previous_non_blank(cursor)
        if line is None:
            return None
        end = cursor.lines.line_end(line)
    leaf = _last_token(tree, cursor, line, end)
    if leaf is None or leaf.type not in language.block_openers:
        return None
    parents = language.block_openers[leaf.type]
    parent = leaf.parent
    if parents is not None and (parent is None or parent.type not in parents):
        return None
    if parent is not None and parent.type == "ERROR" and language.header_keywords:
        words = cursor.lines.line_text(line).split(None, 1)
        if not words or words[0].rstrip(":") not in language.header_keywords:
            return None
    return line


def _previous_non_blank(cursor: Cursor) -> int | None:
    for line in range(cursor.line - 1, -1, -1):
        if cursor.lines.line_text(line).strip():
            return line
    return None


def _last_token(tree: tree_sitter.Tree, cursor: Cursor, line: int, end: int):
    """The leaf holding the last non-blank character of `line` before str offset `end`."""
    start = cursor.lines.starts[line]
    text = cursor.text[start:end].rstrip()
    if not text:
        return None
    last = start + len(text) - 1
    byte = utf8_length(cursor.text[:last])
    return tree.root_node.descendant_for_byte_range(byte, byte + utf8_length(cursor.text[last]))


def _body_is_empty(cursor: Cursor, opener_indent: int) -> bool:
    following = cursor.next_line()
    return following is None or indent_width(following) <= opener_indent


# ---------------------------------------------------------------------------------------------
# 2. Windows

class TokenCounter:
    """Token counts of text pieces, memoised (lines rarely change between keystrokes)."""

    def __init__(self, count: Count, max_entries: int = 16384) -> None:
        self._count = count
        self._memo: dict[str, int] = {}
        self._max = max_entries

    def __call__(self, text: str) -> int:
        if not text:
            return 0
        tokens = self._memo.get(text)
        if tokens is None:
            tokens = self._count(text.replace("\r\n", "\n"))
            if len(self._memo) >= self._max:
                self._memo.clear()
            self._memo[text] = tokens
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
    head = cursor.head
    used = count(head)
    if used > budget:
        cut = _longest_fitting_end(head, budget, count)
        return cursor.line_start + cut, count(head[cut:])
    starts = cursor.lines.starts
    start = cursor.line_start
    for line in range(cursor.line - 1, -1, -1):
        tokens = count(cursor.text[starts[line]:starts[line + 1]])
        if used + tokens > budget:
            break
        used += tokens
        start = starts[line]
    return start, used


def _suffix_window(cursor: Cursor, budget: int, count: Count) -> tuple[int, int]:
    tail = cursor.tail
    used = count(tail)
    if used > budget:
        cut = _longest_fitting_start(tail, budget, count)
        return cursor.offset + cut, count(tail[:cut])
    lines = cursor.lines
    end = cursor.line_end
    for line in range(cursor.line + 1, lines.count):
        line_end = lines.line_end(line)
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


# ---------------------------------------------------------------------------------------------
# 3. Related snippets

class Source(NamedTuple):
    """One open document as the snippet search reads it."""

    uri: str
    path: str
    language: LanguageSpec | None
    text: str
    version: int
    tree: tree_sitter.Tree | None


@dataclass(frozen=True)
class Snippet:
    path: str
    text: str
    comment: str          # line comment of the snippet's language, for its path header
    kind: str             # "definition" | "window"
    score: float
    tokens: int = 0       # as costed against the snippet budget
    uri: str = ""         # where it comes from: document and lines
    lines: tuple[int, int] = (0, 0)

    def overlaps(self, other: "Snippet") -> bool:
        return self.uri == other.uri and self.lines[0] <= other.lines[1] and other.lines[0] <= self.lines[1]


class _Definition(NamedTuple):
    name: str
    first_line: int
    last_line: int
    start_byte: int
    end_byte: int


class _Window(NamedTuple):
    first_line: int
    text: str
    identifiers: frozenset


_IDENTIFIER = re.compile(r"[^\W\d]\w+")
_KEYWORDS = frozenset("""
    and as assert async await bool break case catch char class const continue def default defer
    del do double elif else end enum except export extends false final finally float fn for from
    func function go if impl import in int interface is let local long loop match mod mut new nil
    none not null or package pass private protected pub public raise return self static str
    string struct super switch then this throw true try type typeof undefined use var void while
    with yield""".split())

CONTEXT_LINES_BEFORE = 30   # lines around the cursor whose identifiers rank other windows
CONTEXT_LINES_AFTER = 10
USAGE_LINES = 8             # lines above the cursor whose identifiers we look up definitions of
WINDOW_LINES = 20           # windows of other documents: this many lines …
WINDOW_STRIDE = 10          # … every this many lines
MIN_WINDOW_SCORE = 0.1      # Jaccard similarity below which a window is not shown
DEFINITION_LINES = 12       # a definition is shown up to this many lines


def identifiers(text: str) -> set[str]:
    return {word for word in _IDENTIFIER.findall(text) if word.lower() not in _KEYWORDS}


class RelatedIndex:
    """Per-document facts for related snippets (definitions, windows), cached by content.

    Other documents change rarely while one is being typed in, so their definitions and window
    identifier sets are kept per (uri, version, text hash); `forget(uri)` drops a document.
    """

    def __init__(self, max_documents: int = 64) -> None:
        self._cache: OrderedDict = OrderedDict()
        self._max = max_documents
        self._lock = threading.Lock()

    def forget(self, uri: str) -> None:
        with self._lock:
            for key in [key for key in self._cache if key[0] == uri]:
                del self._cache[key]

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()

    def definitions(self, source: Source) -> list[_Definition]:
        return self._get(source, "definitions", _find_definitions)

    def windows(self, source: Source) -> list[_Window]:
        return self._get(source, "windows", _split_windows)

    def _get(self, source: Source, kind: str, compute):
        key = (source.uri, source.version, hash(source.text), kind)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        value = compute(source)
        with self._lock:
            for stale in [k for k in self._cache if k[0] == source.uri and k[3] == kind]:
                del self._cache[stale]
            self._cache[key] = value
            while len(self._cache) > 2 * self._max:
                self._cache.popitem(last=False)
        return value


def _find_definitions(source: Source) -> list[_Definition]:
    if source.language is None or source.tree is None or source.language.definition_query is None:
        return []
    cursor = tree_sitter.QueryCursor(source.language.definition_query)
    found = []
    for _, captures in cursor.matches(source.tree.root_node):
        node, name = captures["definition"][0], captures["name"][0]
        found.append(_Definition(
            name.text.decode("utf-8", "replace"), node.start_point[0], node.end_point[0],
            node.start_byte, node.end_byte))
    return found


def _split_windows(source: Source) -> list[_Window]:
    lines = source.text.split("\n")  # rows as tree-sitter counts them, like definitions'
    windows = []
    for first in range(0, max(len(lines) - WINDOW_LINES, 0) + 1, WINDOW_STRIDE):
        text = "\n".join(lines[first:first + WINDOW_LINES])
        if text.strip():
            windows.append(_Window(first, text, frozenset(identifiers(text))))
    return windows


def related_snippets(current: Source, cursor: Cursor, windows: Windows,
                     others: Sequence[Source], index: RelatedIndex,
                     budget: int, count: Count) -> tuple[Snippet, ...]:
    """Definitions first (nearest use first), then similar windows, while the budget lasts.

    Returned in prompt order: the most relevant snippet last, nearest the file.
    """
    if budget <= 0:
        return ()
    candidates = _definition_snippets(current, cursor, windows, others, index)
    candidates += _window_snippets(current, cursor, others, index)
    chosen, used = [], 0
    for snippet in candidates:
        if any(snippet.overlaps(other) for other in chosen):
            continue
        tokens = count(_header(snippet) + snippet.text + "\n")
        if used + tokens > budget:
            continue
        chosen.append(replace(snippet, tokens=tokens))
        used += tokens
    return tuple(reversed(chosen))


def _header(snippet: Snippet) -> str:
    return f"{snippet.comment} {snippet.path}\n"


def _names_near_cursor(cursor: Cursor) -> list[str]:
    """Identifiers used on the cursor's line and the lines above it, nearest first."""
    first = cursor.lines.starts[max(cursor.line - USAGE_LINES, 0)]
    words = _IDENTIFIER.findall(cursor.text[first:cursor.offset])
    ordered = []
    for word in reversed(words):
        if word not in ordered and word.lower() not in _KEYWORDS:
            ordered.append(word)
    return ordered


def _definition_snippets(current: Source, cursor: Cursor, windows: Windows,
                         others: Sequence[Source], index: RelatedIndex) -> list[Snippet]:
    names = _names_near_cursor(cursor)
    if not names:
        return []
    by_name: dict[str, list[tuple[Source, _Definition]]] = {}
    for source in (current, *others):
        for definition in index.definitions(source):
            by_name.setdefault(definition.name, []).append((source, definition))
    snippets = []
    for rank, name in enumerate(names):
        for source, definition in by_name.get(name, ()):
            if source.uri == current.uri and _visible(definition, cursor, windows):
                continue
            snippets.append(Snippet(
                source.path, _definition_text(source, definition), _comment(source), "definition",
                1.0 / (rank + 1), uri=source.uri, lines=(definition.first_line, definition.last_line)))
    return snippets


def _visible(definition: _Definition, cursor: Cursor, windows: Windows) -> bool:
    """Whether a definition of the current document is already in the prompt, or encloses the cursor."""
    if definition.start_byte <= cursor.byte <= definition.end_byte:
        return True
    return definition.last_line >= windows.first_line and definition.first_line <= windows.last_line


def _definition_text(source: Source, definition: _Definition) -> str:
    rows = source.text.split("\n")[definition.first_line:definition.last_line + 1]  # tree-sitter rows
    return "\n".join(row.rstrip("\r") for row in rows[:DEFINITION_LINES])


def _window_snippets(current: Source, cursor: Cursor, others: Sequence[Source],
                     index: RelatedIndex) -> list[Snippet]:
    lines = cursor.lines
    first = lines.starts[max(cursor.line - CONTEXT_LINES_BEFORE, 0)]
    last = lines.line_end(min(cursor.line + CONTEXT_LINES_AFTER, lines.count - 1))
    around = frozenset(identifiers(cursor.text[first:last]))
    if not around:
        return []
    scored = []
    for source in others:
        if source.uri == current.uri:
            continue
        for window in index.windows(source):
            score = _jaccard(around, window.identifiers)
            if score >= MIN_WINDOW_SCORE:
                rows = (window.first_line, window.first_line + window.text.count("\n"))
                scored.append(Snippet(source.path, window.text.rstrip("\r\n"), _comment(source),
                                      "window", score, uri=source.uri, lines=rows))
    scored.sort(key=lambda snippet: snippet.score, reverse=True)
    return scored


def _jaccard(a: frozenset, b: frozenset) -> float:
    shared = len(a & b)
    return shared / len(a | b) if shared else 0.0


def _comment(source: Source) -> str:
    return source.language.comment if source.language else "#"


# ---------------------------------------------------------------------------------------------
# The whole context

@dataclass(frozen=True)
class Context:
    mode: str
    path: str | None                 # the file's relative path, for its header comment
    comment: str                     # the file's line comment
    prefix: str                      # window text before the cursor (the document's line ends)
    suffix: str                      # window text after the cursor
    snippets: tuple[Snippet, ...]    # related snippets, placed before the file


def build_context(mode: str, current: Source, cursor: Cursor, others: Sequence[Source],
                  index: RelatedIndex, *, budget: int, snippet_budget: int,
                  prefix_fraction: float, count: Count) -> Context:
    """Windows and snippets within `budget` tokens, of which snippets take up to `snippet_budget`.

    The windows are first sized as if there were no snippets, to know which definitions of the
    current file would be visible anyway; then snippets are chosen and the windows re-sized to
    what the snippets left.
    """
    snippet_budget = max(0, min(snippet_budget, budget // 2))
    widest = choose_windows(cursor, budget, prefix_fraction, count)
    snippets = related_snippets(current, cursor, widest, others, index, snippet_budget, count)
    used = sum(snippet.tokens for snippet in snippets)
    windows = choose_windows(cursor, budget - used, prefix_fraction, count) if used else widest
    return Context(
        mode=mode,
        path=current.path or None,
        comment=_comment(current),
        prefix=cursor.text[windows.start:cursor.offset],
        suffix=cursor.text[cursor.offset:windows.end],
        snippets=snippets,
    )
