"""Open documents: text, LSP positions and an incrementally maintained tree-sitter tree.

This is the one place where the three coordinate systems meet:

* LSP positions: 0-based line, `character` in UTF-16 code units; lines end at "\\r\\n", "\\r"
  or "\\n" (the LSP rule, not `str.splitlines`, which also breaks at \\v, \\f, U+2028 …);
* str offsets: what Python slices with (code points);
* tree-sitter: byte offsets into the UTF-8 text, and points (row, byte column). Its rows count
  "\\n" only, so it parses the text with each lone "\\r" read as "\\n" (`tree_source`: the same
  bytes at the same offsets); its rows are then LSP's lines.

Everything that reads lines reads them as LSP does: `lf` gives the text in "\\n" line ends.

Notifications mutate a `Document` (`apply`), requests read immutable `Snapshot`s. A document
publishes its text, version and tree together as one `DocumentState` (its tree parsed when first
read), and never edits a published tree in place, so a worker thread may read them while the
event loop applies changes.
"""
from __future__ import annotations

import bisect
import enum
import re
import threading
import time
from typing import Callable, Sequence

import tree_sitter

from completion.errors import DocumentLimit, InvalidPosition, UnknownDocument
from completion.languages import LanguageSpec, language_for
from completion.types import Position, Snapshot, TextChange

_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_LONE_CR = re.compile(r"\r(?!\n)")


def encode(text: str) -> bytes:
    """The UTF-8 bytes of `text`, which tree-sitter's byte offsets count (lone surrogates pass
    through rather than fail)."""
    return text.encode("utf-8", "surrogatepass")


def tree_source(text: str) -> bytes:
    """The bytes tree-sitter parses: `encode(text)` with each lone CR read as LF, one byte for
    one, so its rows are LSP's lines (a grammar that does not know "\\r" parses it too)."""
    return encode(_LONE_CR.sub("\n", text) if "\r" in text else text)


def lf(text: str) -> str:
    """`text` with LSP's line ends ("\\r\\n", lone "\\r", "\\n") as "\\n"."""
    return text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text


def utf8_length(text: str) -> int:
    return len(text) if text.isascii() else len(encode(text))


def line_ending(text: str) -> str:
    """The text's first line break ("\n" when it has none): what suggestions should use."""
    match = _LINE_BREAK.search(text)
    return match.group() if match else "\n"


def utf16_length(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-16-le", "surrogatepass")) // 2


class Lines:
    """Where each line of a text starts, for converting between LSP positions and str offsets."""

    __slots__ = ("text", "starts")

    def __init__(self, text: str, starts: list[int] | None = None) -> None:
        self.text = text
        self.starts = starts if starts is not None else [0] + [m.end() for m in _LINE_BREAK.finditer(text)]

    def edited(self, text: str, start: int, end: int, inserted: int) -> "Lines":
        """The lines of `text`, which is this text with [start, end) replaced by `inserted`
        characters: line starts before the edit are kept, those after it shifted, and only
        the edited lines scanned (a keystroke in a 3,000-line file does not rescan it).

        A line start s before the edit is kept when its line break lies before the character
        before the edit (s <= start - 1), one after it shifted when the break's characters lie
        after it (s >= end + 2): a CR at either side of the edit may pair with an LF."""
        starts = self.starts
        keep = bisect.bisect_right(starts, max(start - 1, 0))       # starts[:keep] <= start - 1, and 0
        first_after = bisect.bisect_left(starts, end + 2)           # starts[first_after:] >= end + 2
        scanned_to = start + inserted + 1                            # end + 1, in the new text
        scanned = []
        for match in _LINE_BREAK.finditer(text, starts[keep - 1]):
            if match.end() > scanned_to:
                break
            scanned.append(match.end())
        shift = start + inserted - end
        return Lines(text, starts[:keep] + scanned + [s + shift for s in starts[first_after:]])

    @property
    def count(self) -> int:
        return len(self.starts)

    def line_end(self, line: int) -> int:
        """Offset just past the last character of `line`, before its line break."""
        if line + 1 < len(self.starts):
            end = self.starts[line + 1] - 1
            if self.text[end] == "\n" and end > self.starts[line] and self.text[end - 1] == "\r":
                end -= 1
            return end
        return len(self.text)

    def line_text(self, line: int) -> str:
        return self.text[self.starts[line]:self.line_end(line)]

    def offset(self, position: Position, *, strict: bool = True) -> int:
        """The str offset of an LSP position.

        strict (requests): a position outside the text raises InvalidPosition.
        lenient (content changes): LSP's rule — a character past the line's end means the
        line's end, a line past the last means the end of the text.
        """
        line, character = position.line, position.character
        if line < 0 or character < 0:
            if strict:
                raise InvalidPosition(f"Position ({line}, {character}) has a negative coordinate.")
            line, character = max(line, 0), max(character, 0)
        if line >= self.count:
            if strict:
                raise InvalidPosition(
                    f"Line {line} is past the end of the document, which has {self.count} lines.")
            return len(self.text)
        start = self.starts[line]
        index = _utf16_to_index(self.line_text(line), character)
        if index is _Miss.PAST_END:
            if strict:
                raise InvalidPosition(
                    f"Character {character} is past the end of line {line}, which is "
                    f"{utf16_length(self.line_text(line))} UTF-16 code units long.")
            return self.line_end(line)
        if index is _Miss.INSIDE_PAIR:
            if strict:
                raise InvalidPosition(
                    f"Character {character} of line {line} falls inside a surrogate pair.")
            index = _utf16_to_index(self.line_text(line), character - 1)
            assert isinstance(index, int), "the code unit before a pair's second half starts the pair"
        return start + index

    def position(self, offset: int) -> Position:
        """The LSP position of a str offset."""
        line = bisect.bisect_right(self.starts, offset) - 1
        return Position(line, utf16_length(self.text[self.starts[line]:offset]))


class _Miss(enum.Enum):
    """Why a UTF-16 position has no str index on its line."""

    PAST_END = enum.auto()
    INSIDE_PAIR = enum.auto()   # between the two code units of a character outside the BMP


_ASTRAL = re.compile("[\U00010000-\U0010ffff]")   # two UTF-16 code units each


def _utf16_to_index(line: str, units: int) -> int | _Miss:
    """The str index `units` UTF-16 code units into `line`, or a marker when there is none.
    Only the characters outside the BMP are visited: a line of megabytes costs no Python loop."""
    shift = 0   # characters outside the BMP before the point reached
    for match in _ASTRAL.finditer(line):
        before = match.start() + shift   # code units before this character
        if units <= before:
            break
        if units == before + 1:
            return _Miss.INSIDE_PAIR
        shift += 1
    index = units - shift
    return index if index <= len(line) else _Miss.PAST_END


def ts_point(text: str, offset: int) -> tuple[int, int]:
    """tree-sitter's point of a str offset in `tree_source(text)`: (row, UTF-8 byte column)."""
    head = text[:offset + 1]   # the character after the offset tells whether a CR before it is lone
    head = (_LONE_CR.sub("\n", head) if "\r" in head else head)[:offset]
    line_start = head.rfind("\n") + 1
    return head.count("\n"), utf8_length(head[line_start:])


def _point_after(start: tuple[int, int], inserted: str, following: str) -> tuple[int, int]:
    """The point after `inserted` put at `start` (before the text `following` it)."""
    row, column = ts_point(inserted + following[:1], len(inserted))
    return (start[0], start[1] + column) if row == 0 else (start[0] + row, column)


def edit_tree(tree: tree_sitter.Tree, text: str, start: int, end: int, inserted: str) -> None:
    """Tell `tree` (of `text`) that text[start:end] becomes `inserted` (str offsets).

    A CR right before the edit is edited too: whether it is lone (a line end of its own in
    `tree_source`) depends on what follows it."""
    if start > 0 and text[start - 1] == "\r":
        start, inserted = start - 1, "\r" + inserted
    start_byte = utf8_length(text[:start])
    start_point = ts_point(text, start)
    tree.edit(
        start_byte=start_byte,
        old_end_byte=start_byte + utf8_length(text[start:end]),
        new_end_byte=start_byte + utf8_length(inserted),
        start_point=start_point,
        old_end_point=ts_point(text, end),
        new_end_point=_point_after(start_point, inserted, text[end:end + 1]),
    )


MAX_PARSE_CHARS = 1 << 20   # longer texts are not parsed (a Workspace's default; the server's max_parse_kb)


def parse(language: LanguageSpec, text: str, max_chars: int = MAX_PARSE_CHARS,
          edited: tree_sitter.Tree | None = None) -> tree_sitter.Tree | None:
    """A tree of `text` (used for snapshots whose document has moved on), fresh or, from
    `edited` (a tree of the text before, told of the edits: `edit_tree`), incremental; None when
    the text is longer than `max_chars`: parsing it would hold up every other request."""
    if len(text) > max_chars:
        return None
    parser = language.parser()
    return parser.parse(tree_source(text), edited) if edited is not None else parser.parse(tree_source(text))


class DocumentState:
    """What a document publishes at once: text, version, line starts and tree.

    The tree is parsed when first read, not when the change arrives: a notification only edits
    the last tree (`tree.edit`, microseconds), so the event loop goes on reading messages, and
    keystrokes that no request reads (typed through, debounced, cancelled) cost no parse — the
    next parse takes all their edits at once. Parsing a line left unfinished costs tree-sitter's
    error recovery ~12 ms in a 3,000-line Python file, against ~0.5 ms for a finished one."""

    __slots__ = ("text", "version", "lines", "_parser", "_edited", "_tree", "parse_ms")

    def __init__(self, text: str, version: int, lines: Lines, parser: "_SharedParser | None",
                 edited: tree_sitter.Tree | None) -> None:
        """`parser` None: no tree (no grammar, or too long a text); `edited`: the last tree with
        every edit since told (None: parse from scratch)."""
        self.text, self.version, self.lines = text, version, lines
        self._parser, self._edited = parser, edited
        self._tree: tree_sitter.Tree | None | _Unparsed = _UNPARSED if parser is not None else None
        self.parse_ms = 0.0   # what parsing this state took (0 until parsed, or never needed)

    @property
    def tree(self) -> tree_sitter.Tree | None:
        tree = self._tree
        if isinstance(tree, _Unparsed):
            assert self._parser is not None, "a state without a parser has no tree to parse"
            with self._parser.lock:   # one parse per state; the document's parser is not shared
                tree = self._tree
                if isinstance(tree, _Unparsed):
                    started = time.perf_counter()
                    tree = self._tree = self._parser.parse(tree_source(self.text), self._edited)
                    self._edited = None
                    self.parse_ms = (time.perf_counter() - started) * 1e3
        return tree

    @property
    def has_tree(self) -> bool:
        """Whether this text has a tree (a grammar, and no more than max_parse_chars)."""
        return self._parser is not None

    @property
    def parsed(self) -> bool:
        """Whether the tree was read (and so parsed, where there is one to parse)."""
        return not isinstance(self._tree, _Unparsed)

    def tree_to_edit(self) -> tree_sitter.Tree | None:
        """A copy of the tree the next version starts from (None: it parses from scratch)."""
        if self._parser is None:
            return None
        with self._parser.lock:
            tree = self._edited if isinstance(self._tree, _Unparsed) else self._tree
            return tree.copy() if tree is not None else None


class _Unparsed:
    """The tree of a state nobody has read yet."""


_UNPARSED = _Unparsed()


class _SharedParser:
    """A document's parser and the lock its states parse under."""

    def __init__(self, parser: tree_sitter.Parser) -> None:
        self.parser, self.lock = parser, threading.Lock()

    def parse(self, source: bytes, old: tree_sitter.Tree | None) -> tree_sitter.Tree:
        return self.parser.parse(source, old) if old is not None else self.parser.parse(source)


class Document:
    """The text and incremental tree-sitter tree of one open document (no tree while the text
    is longer than `max_parse_chars`)."""

    def __init__(self, uri: str, language_id: str, text: str, version: int,
                 path: str | None = None, max_parse_chars: int = MAX_PARSE_CHARS) -> None:
        self.uri = uri
        self.language_id = language_id
        self.path = path
        self.language = language_for(language_id, path or uri)
        self.max_parse_chars = max_parse_chars
        self._parser = _SharedParser(self.language.parser()) if self.language else None
        self._state = self._published(text, version, None)

    @property
    def text(self) -> str:
        return self._state.text

    @property
    def version(self) -> int:
        return self._state.version

    @property
    def lines(self) -> Lines:
        return self._state.lines

    @property
    def tree(self) -> tree_sitter.Tree | None:
        """The current tree (parsed now if nobody has read it since the last change)."""
        return self._state.tree

    @property
    def parseable(self) -> bool:
        """Whether the current text has a tree (a grammar, and no more than max_parse_chars),
        told without parsing it."""
        return self._state.has_tree

    def apply(self, changes: Sequence[TextChange], version: int) -> None:
        """Apply LSP content changes in order (ranges of each relative to the text before it)."""
        text, lines = self._state.text, self._state.lines
        tree = self._state.tree_to_edit()
        for change in changes:
            if change.range is None:
                text, tree = change.text, None
                lines = Lines(text)
                continue
            start = lines.offset(change.range.start, strict=False)
            end = lines.offset(change.range.end, strict=False)
            start, end = min(start, end), max(start, end)
            if tree is not None:
                edit_tree(tree, text, start, end, change.text)
            text = text[:start] + change.text + text[end:]
            lines = lines.edited(text, start, end, len(change.text))
        self._state = self._published(text, version, tree, lines)

    def snapshot(self) -> Snapshot:
        state = self._state
        return Snapshot(self.uri, self.language_id, state.text, state.version, self.path)

    @property
    def state(self) -> DocumentState:
        return self._state

    def state_for(self, snapshot: Snapshot) -> DocumentState | None:
        """This document's state when it is the state of `snapshot` (same version and text)."""
        state = self._state
        if state.version == snapshot.version and state.text == snapshot.text:
            return state
        return None

    def _published(self, text: str, version: int, edited: tree_sitter.Tree | None,
                   lines: Lines | None = None) -> DocumentState:
        parser = self._parser if len(text) <= self.max_parse_chars else None
        return DocumentState(text, version, lines if lines is not None else Lines(text), parser, edited)


MAX_DOCUMENTS = 2000        # open documents kept at most: an editor sends those it has loaded (open
                            # tabs, what extensions read), hundreds in a large session; each costs
                            # 10-50 KB beyond its text (tree, line starts), so at most ~100 MB
MAX_CHARS = 256 << 20       # characters kept in all (a Workspace's default; the server's: four
                            # messages of max_message_mb)


class Workspace:
    """The open documents, at most `max_documents` holding at most `max_chars` characters in
    all: `open` refuses one more, and `change` drops a document that grows past the bound
    (DocumentLimit, one sentence); the others are kept whole. Mutated by notifications; read
    (briefly locked) by requests."""

    def __init__(self, on_close: Callable[[str], None] | None = None,
                 max_parse_chars: int = MAX_PARSE_CHARS, max_documents: int = MAX_DOCUMENTS,
                 max_chars: int = MAX_CHARS) -> None:
        self._documents: dict[str, Document] = {}
        self._lock = threading.Lock()
        self.on_close = on_close   # the owner's hook: free its per-document state
        self.max_parse_chars = max_parse_chars   # for documents opened from now on
        self.max_documents, self.max_chars = max_documents, max_chars
        self.chars = 0             # characters of the open documents

    def open(self, uri: str, language_id: str, text: str, version: int,
             path: str | None = None) -> Document:
        """Open (or re-open, replacing all state of) a document."""
        if uri in self._documents:
            self.close(uri)
        if len(self._documents) >= self.max_documents:
            raise DocumentLimit(f"The document {uri} is not kept: {len(self._documents):,} documents are open, the "
                                "most the server keeps; close some and open it again.")
        self._check_chars(uri, self.chars + len(text))
        document = Document(uri, language_id, text, version, path, self.max_parse_chars)
        with self._lock:
            self._documents[uri] = document
        self.chars += len(text)
        return document

    def change(self, uri: str, version: int, changes: Sequence[TextChange]) -> None:
        document = self._require(uri)
        before = len(document.text)
        document.apply(changes, version)
        self.chars += len(document.text) - before
        if self.chars > self.max_chars:
            self.close(uri)
            self._check_chars(uri, self.chars + len(document.text))

    def close(self, uri: str) -> None:
        """Forget a document and every piece of per-document state kept for it."""
        with self._lock:
            document = self._documents.pop(uri, None)
        if document is not None:
            self.chars -= len(document.text)
        if self.on_close is not None:
            self.on_close(uri)

    def _check_chars(self, uri: str, chars: int) -> None:
        if chars > self.max_chars:
            raise DocumentLimit(f"The document {uri} is not kept: the open documents would hold {chars:,} "
                                f"characters, more than the {self.max_chars:,} the server keeps; close some and open "
                                "it again.")

    def get(self, uri: str) -> Document | None:
        return self._documents.get(uri)

    def state_for(self, snapshot: Snapshot) -> DocumentState | None:
        """The open document's state when `snapshot` is of it (same version and text)."""
        document = self._documents.get(snapshot.uri)
        return document.state_for(snapshot) if document is not None else None

    def snapshot(self, uri: str) -> Snapshot:
        return self._require(uri).snapshot()

    def documents(self) -> list[Document]:
        with self._lock:
            return list(self._documents.values())

    def __len__(self) -> int:
        return len(self._documents)

    def _require(self, uri: str) -> Document:
        document = self._documents.get(uri)
        if document is None:
            raise UnknownDocument(f"The document {uri} is not open.")
        return document
