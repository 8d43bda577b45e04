"""Related snippets: what of the other open documents (and this one) the model is shown.

Under their own budget, definitions of identifiers used near the cursor (tree-sitter
definition queries over the open documents), then windows of other open documents ranked by
identifier overlap (Jaccard) with the text around the cursor. `RelatedIndex` keeps each
document's definitions and windows until its text changes.
"""
from __future__ import annotations

import posixpath
import re
import threading
import time
import urllib.parse
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import NamedTuple, Sequence

import tree_sitter

from completion.document import Document, Workspace, lf
from completion.languages import LanguageSpec
from completion.types import Snapshot
from completion.windows import Count, Cursor, Windows, max_chars

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


def other_sources(workspace: Workspace, uri: str) -> list[Source]:
    """The open documents other than `uri` that snippets may come from; one too large to parse
    is too large to scan for windows on every keystroke, so it offers none."""
    sources = []
    for document in workspace.documents():
        state = document.state
        if document.uri == uri or len(state.text) > workspace.max_parse_chars:
            continue
        sources.append(Source(document.uri, display_path(document), document.language,
                              state.text, state.version, state.tree))
    return sources


def display_path(document: Document | Snapshot) -> str:
    """The relative path for a file's header; the URI's last segment when there is none."""
    if document.path:
        return document.path
    return posixpath.basename(urllib.parse.urlparse(document.uri).path) or document.uri


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

    def moved(self, rows: int, offset: int) -> "_Definition":
        return _Definition(self.name, self.first_line + rows, self.last_line + rows,
                           self.start_byte + offset, self.end_byte + offset)


# (node type, whether it is a top-level statement, byte length, text hash) of a piece of the
# tree -> its definitions, with rows and bytes counted from the piece's start
_Pieces = dict[tuple[str, bool, int, int], list[_Definition]]


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
    identifier sets are kept per (uri, version, text hash); `forget(uri)` drops a document. The
    document typed in changes on every keystroke: its definitions are kept per top-level
    statement too (`_Pieces`), so a keystroke queries only the statement it falls in.
    """

    def __init__(self, max_documents: int = 64) -> None:
        self._cache: OrderedDict = OrderedDict()
        self._pieces: dict[str, _Pieces] = {}
        self._max = max_documents
        self._lock = threading.Lock()
        self.query_seconds = 0.0   # spent finding definitions

    def forget(self, uri: str) -> None:
        with self._lock:
            for key in [key for key in self._cache if key[0] == uri]:
                del self._cache[key]
            self._pieces.pop(uri, None)

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()
            self._pieces.clear()

    def definitions(self, source: Source) -> list[_Definition]:
        return self._get(source, "definitions", self._definitions)

    def _definitions(self, source: Source) -> list[_Definition]:
        with self._lock:
            known = self._pieces.get(source.uri, {})
        started = time.perf_counter()
        found, pieces = _find_definitions(source, known)
        with self._lock:
            self.query_seconds += time.perf_counter() - started
            self._pieces[source.uri] = pieces
            while len(self._pieces) > self._max:
                self._pieces.pop(next(iter(self._pieces)))
        return found

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


SPLIT_BYTES = 4096   # a changed statement longer than this is not queried whole: its parts are


def _find_definitions(source: Source, known: _Pieces) -> tuple[list[_Definition], _Pieces]:
    """The definitions of `source` in document order, and its pieces' for the next call: a
    statement whose text is in `known` is not queried again, and a long one that changed is
    taken apart (its own header, then each part), so a keystroke in a method of a long class
    queries that method."""
    if source.language is None or source.tree is None or source.language.definition_query is None:
        return [], {}
    root, query = source.tree.root_node, source.language.definition_query
    pieces: _Pieces = {}
    found: list[_Definition] = []
    for statement in root.children:
        found += _definitions_in(statement, root, query, known, pieces)
    return found, pieces


def _definitions_in(node: tree_sitter.Node, root: tree_sitter.Node, query: tree_sitter.Query,
                    known: _Pieces, pieces: _Pieces) -> list[_Definition]:
    text, top = node.text or b"", node.parent == root
    key = (node.type, top, len(text), hash(text))   # a statement matches patterns that start at the module too
    relative = known.get(key)
    if relative is None:
        if len(text) > SPLIT_BYTES and node.child_count:
            found = _rooted_at(node, root, query)
            for child in node.children:
                found += _definitions_in(child, root, query, known, pieces)
            found.sort(key=_document_order)
        elif top:
            found = query_definitions(query, root, node.start_byte, node.end_byte)
        else:
            found = query_definitions(query, node)
        relative = [d.moved(-node.start_point[0], -node.start_byte) for d in found]
    pieces[key] = relative
    return [d.moved(node.start_point[0], node.start_byte) for d in relative]


def _rooted_at(node: tree_sitter.Node, root: tree_sitter.Node, query: tree_sitter.Query) -> list[_Definition]:
    """The definitions whose pattern starts at `node` itself (or, for a statement, at the
    module above it), not below it."""
    top = node.parent is not None and node.parent == root
    return [d for d in query_definitions(query, root if top else node, node.start_byte, node.end_byte,
                                         max_start_depth=1 if top else 0)
            if (d.start_byte, d.end_byte) == (node.start_byte, node.end_byte)]


def query_definitions(query: tree_sitter.Query, root: tree_sitter.Node, start_byte: int = 0,
                      end_byte: int | None = None, max_start_depth: int | None = None) -> list[_Definition]:
    """The definitions the language's query finds in bytes [start_byte, end_byte) under `root`
    (all of it by default), in document order; `max_start_depth`: only patterns that start
    that deep below `root` at most."""
    end_byte = root.end_byte if end_byte is None else end_byte
    cursor = tree_sitter.QueryCursor(query)
    cursor.set_byte_range(start_byte, end_byte)
    if max_start_depth is not None:
        cursor.set_max_start_depth(max_start_depth)
    found = []
    for _, captures in cursor.matches(root):
        node, name = captures["definition"][0], captures["name"][0]
        if not start_byte <= node.start_byte <= node.end_byte <= end_byte:
            continue   # a pattern rooted higher (Python's module-level assignments) matches everywhere
        assert name.text is not None, "a tree parsed from bytes keeps its nodes' text"
        found.append(_Definition(
            name.text.decode("utf-8", "replace"), node.start_point[0], node.end_point[0],
            node.start_byte, node.end_byte))
    return sorted(found, key=_document_order)


def _document_order(definition: _Definition) -> tuple[int, int, str]:
    return definition.start_byte, -definition.end_byte, definition.name


def _split_windows(source: Source) -> list[_Window]:
    lines = lf(source.text).split("\n")  # LSP's lines: tree-sitter's rows, like definitions'
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
    candidates += _window_snippets(current, cursor, windows, others, index)
    chosen, used = [], 0
    for snippet in candidates:
        if len(snippet.text) > max_chars(budget - used) or any(snippet.overlaps(other) for other in chosen):
            continue   # too long to fit, told without tokenizing it
        tokens = count(_header(snippet) + snippet.text + "\n")
        if used + tokens > budget:
            continue
        chosen.append(replace(snippet, tokens=tokens))
        used += tokens
    return tuple(reversed(chosen))


def _header(snippet: Snippet) -> str:
    return f"{snippet.comment} {snippet.path}\n"


def _names_near_cursor(cursor: Cursor, windows: Windows) -> list[str]:
    """Identifiers used on the cursor's line and the lines above it, nearest first (within the
    prefix window: a line of megabytes is not searched whole)."""
    first = max(cursor.lines.starts[max(cursor.line - USAGE_LINES, 0)], windows.start)
    words = _IDENTIFIER.findall(cursor.text[first:cursor.offset])
    ordered = []
    for word in reversed(words):
        if word not in ordered and word.lower() not in _KEYWORDS:
            ordered.append(word)
    return ordered


def _definition_snippets(current: Source, cursor: Cursor, windows: Windows,
                         others: Sequence[Source], index: RelatedIndex) -> list[Snippet]:
    names = _names_near_cursor(cursor, windows)
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
                source.path, _definition_text(source, definition), comment_of(source), "definition",
                1.0 / (rank + 1), uri=source.uri, lines=(definition.first_line, definition.last_line)))
    return snippets


def _visible(definition: _Definition, cursor: Cursor, windows: Windows) -> bool:
    """Whether a definition of the current document is already in the prompt, or encloses the cursor."""
    if definition.start_byte <= cursor.byte <= definition.end_byte:
        return True
    return definition.last_line >= windows.first_line and definition.first_line <= windows.last_line


def _definition_text(source: Source, definition: _Definition) -> str:
    rows = lf(source.text).split("\n")[definition.first_line:definition.last_line + 1]  # tree-sitter rows
    return "\n".join(rows[:DEFINITION_LINES])


def _window_snippets(current: Source, cursor: Cursor, windows: Windows, others: Sequence[Source],
                     index: RelatedIndex) -> list[Snippet]:
    lines = cursor.lines
    first = max(lines.starts[max(cursor.line - CONTEXT_LINES_BEFORE, 0)], windows.start)
    last = min(lines.line_end(min(cursor.line + CONTEXT_LINES_AFTER, lines.count - 1)), windows.end)
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
                scored.append(Snippet(source.path, window.text.rstrip("\n"), comment_of(source),
                                      "window", score, uri=source.uri, lines=rows))
    scored.sort(key=lambda snippet: snippet.score, reverse=True)
    return scored


def _jaccard(a: frozenset, b: frozenset) -> float:
    shared = len(a & b)
    return shared / len(a | b) if shared else 0.0


def comment_of(source: Source) -> str:
    return source.language.comment if source.language else "#"
