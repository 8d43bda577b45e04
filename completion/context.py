"""What the model is shown, decided before any model work.

1. `decide_mode`: tree-sitter decides *whether* and *how much* to complete —
   "none" (the cursor is inside a word, code follows it on its line, or it ends a block header
   whose body is written), "block" (an empty body after a block opener: `def …:`, `{`, `=>`,
   `then` …), else "line" (the rest of the line; at the end of a written line, the next one).
2. `choose_windows` (windows.py): prefix and suffix windows cut at line boundaries under a
   token budget (about ¾ prefix, ¼ suffix; what one side cannot use goes to the other).
3. `related_snippets` (related.py): under their own budget, definitions of identifiers used
   near the cursor, then windows of other open documents ranked by identifier overlap.

`build_context` puts the three together.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import tree_sitter

from completion.document import utf8_length
from completion.languages import LanguageSpec
from completion.related import RelatedIndex, Snippet, Source, comment_of, related_snippets
from completion.windows import Count, Cursor, choose_windows, indent_width, indentation

# What may follow the cursor on its line for a completion to make sense there: closing
# brackets and quotes (they are kept, or replaced by a suggestion that includes them) and
# statement punctuation.
_TAIL_ALLOWED = ")]}>\"'`;,: \t"

# ---------------------------------------------------------------------------------------------
# 1. The mode

def decide_mode(language: LanguageSpec | None, tree: tree_sitter.Tree | None, cursor: Cursor,
                multiline: bool = True) -> str:
    """"none", "line" or "block" for a completion at `cursor`."""
    return decide(language, tree, cursor, multiline)[0]


def decide(language: LanguageSpec | None, tree: tree_sitter.Tree | None, cursor: Cursor,
           multiline: bool = True) -> tuple[str, str]:
    """The mode, and for "none" why (a key of completion.types.REASONS)."""
    head, tail = cursor.head, cursor.tail
    if _inside_word(tree, cursor):
        return "none", "inside-word"
    if tail.strip(_TAIL_ALLOWED):   # stops at the first character of code, however long the line
        return "none", "code-follows"
    if language is None or tree is None:
        return "line", ""
    opener = block_opener(language, tree, cursor)
    if opener is not None:
        if tail.strip() or _body_is_empty(cursor, indent_width(cursor.lines.line_text(opener))):
            return ("block" if multiline else "line"), ""
        if head.strip():
            return "none", "body-written"   # the cursor ends a header whose body is written
    return "line", ""


def editor_indent(language: LanguageSpec | None, tree: tree_sitter.Tree | None, cursor: Cursor) -> str:
    """The indentation an editor's auto-indent would have put before a cursor at the first
    column of a blank line inside indented code — a trimmed blank line between statements, a
    line opened without auto-indent — or "" where the first column stands. After a line that
    opens a block, the body's: the next non-blank line's indentation when it is deeper (the body
    is written), else one level deeper than the opener's. Elsewhere, the previous non-blank
    line's, but only when the next non-blank line is indented too: at the first column after
    the end of a block, the user may well have dedented on purpose (a new definition).

    The service completes as if it were typed and shows it as part of the suggestion: at the
    first column of 200 lines of packages in neither the corpus nor the evaluations, their code
    removed, the bundled model's pipeline answered nothing on 107; with this indentation on 18
    (it is the line's own on 134 of them; none on 38, where the next line starts a definition).
    `benchmarks/typing_acceptance.py --first-column` measures it."""
    if cursor.head or cursor.tail:
        return ""
    above = _previous_non_blank(cursor)
    if above is None:
        return ""
    base, following = indentation(cursor.lines.line_text(above)), cursor.next_line()
    if language is not None and tree is not None and block_opener(language, tree, cursor) is not None:
        if following is not None and indent_width(following) > indent_width(base):
            return indentation(following)
        return base + _indent_unit(cursor, base)
    return base if following is not None and indent_width(following) > 0 else ""


def _indent_unit(cursor: Cursor, base: str) -> str:
    """One level of the document's indentation: a tab where the lines are indented with tabs,
    else the smallest step between neighbouring non-blank lines near the cursor (4 spaces when
    none is seen)."""
    if "\t" in base:
        return "\t"
    lines, steps, previous = cursor.lines, [], None
    for line in range(max(0, cursor.line - 200), min(lines.count, cursor.line + 200)):
        text = lines.line_text(line)
        if not text.strip():
            continue
        if text.startswith("\t"):
            return "\t"
        width = indent_width(text)
        if previous is not None and 0 < width - previous <= 8:
            steps.append(width - previous)
        previous = width
    return " " * (min(steps) if steps else 4)


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
        comment=comment_of(current),
        prefix=cursor.text[windows.start:cursor.offset],
        suffix=cursor.text[cursor.offset:windows.end],
        snippets=snippets,
    )
