"""What to keep of the model's answer.

`clean` runs the text steps in order, on "\\n" line ends:

1. cut at the first special token (the model ran past the middle);
2. cut to the mode: *line* keeps the first line (at the end of a written line, when the model
   starts a new one, that next line) — and where that line opens a bracket at the end of the
   cursor's line, the lines up to the one that closes it (a call written over several lines),
   at most MAX_CONTINUED_LINES; *block* keeps lines while they are indented deeper than the
   block's opener, plus a closing line the cursor's line already ends with;
3. cut where the model starts repeating the suffix's next non-blank line;
4. cut repetition loops (a block of lines three times in a row; a line nested in the block of
   a line that reads the same, `if x:` / `    if x:`; when the model ran out of tokens, a short
   unit repeated at the end);
5. trim trailing whitespace; empty or whitespace-only answers become "";
6. drop an echo: a suggestion that only writes again what is right before the cursor (the text
   just accepted, or the line above) — after an accept, the model likes to repeat it;
7. after a space that ends written code on the line, drop the suggestion's own leading spaces
   (`y = ` + ` a`, an alternative forced to start with a space, would write `y =  a`).

`covered_length` is the range rule: how many characters right of the cursor the suggestion
replaces (see its docstring). `adds_errors` rejects a suggestion that gives the document
tree-sitter ERROR or MISSING nodes it did not have, and in Python one whose indentation
Python would refuse (`indentation_breaks`: tree-sitter's grammar takes an unexpected indent
silently). `finished` tells the streaming loop
(generation.generate) that enough text has arrived for `clean` to cut it, so decoding can stop
early.
"""
from __future__ import annotations

import functools
import io
import re
import tokenize
from dataclasses import dataclass

import tree_sitter

from completion.context import block_opener
from completion.document import edit_tree, encode, lf, line_ending, tree_source
from completion.languages import LanguageSpec
from completion.types import Range, Suggestion
from completion.windows import Cursor, indent_width, indentation

_WORD = re.compile(r"\w")
_WORDS = re.compile(r"\w+")
BEFORE_LINES = 10          # lines before the cursor scanned for open brackets (the range rule)
PLAN_CHARS = 4096          # characters at most of the cursor's line kept on each side, and scanned
                           # before it: a line of megabytes is not copied on every streamed token
MAX_LOOP_PERIOD = 8        # lines in a repeated block
LOOP_COPIES = 3            # copies in a row that make a loop
MIN_CHAR_LOOP = 12         # characters a repeated unit must cover at the end of a truncated answer
STUCK_CHARS = 32           # … and covering this many, decoding stops
INDENT_SCAN_CHARS = 65536  # how far above the cursor a statement at column 0 is looked for
MAX_CONTINUED_LINES = 8    # lines a line suggestion may run on to close a bracket it opened


@dataclass(frozen=True)
class Plan:
    """What postprocessing needs to know about the request, worked out before the model runs."""

    mode: str                      # "line" | "block"
    head: str                      # the cursor's line before the cursor (its last PLAN_CHARS)
    tail: str                      # the cursor's line after the cursor (its first PLAN_CHARS)
    before: str = ""               # the lines before the cursor, "\n" ends (for the bracket scan)
    next_line: str | None = None   # the first non-blank line after the cursor's line
    opener_indent: str = ""        # leading whitespace of the line that opens the block
    specials: tuple[str, ...] = ()  # special-token strings that end a middle
    multiline: bool = True         # False (the setting): a line never runs on to close a bracket

    @property
    def next_line_allowed(self) -> bool:
        """*line* mode at the end of a written line may offer the next line instead (after an
        accept the cursor sits there, and the next suggestion starts with a line break)."""
        return self.mode == "line" and bool(self.head.strip()) and not self.tail.strip()


def plan_for(mode: str, language: LanguageSpec | None, tree: tree_sitter.Tree | None, cursor: Cursor,
             specials: tuple[str, ...], multiline: bool = True) -> Plan:
    """What postprocessing needs of a request at `cursor`, worked out before the model runs."""
    lines = cursor.lines
    opener_indent = ""
    if mode == "block":
        assert language is not None and tree is not None, "block mode is decided on a parsed document"
        opener = block_opener(language, tree, cursor)
        text = lines.line_text(opener if opener is not None else cursor.line)
        opener_indent = indentation(text)
    offset, start = cursor.offset, max(cursor.line_start, cursor.offset - PLAN_CHARS)
    first = min(max(lines.starts[max(cursor.line - BEFORE_LINES, 0)], offset - PLAN_CHARS), cursor.line_start)
    return Plan(mode, cursor.text[start:offset], cursor.text[offset:min(cursor.line_end, offset + PLAN_CHARS)],
                before=lf(cursor.text[first:cursor.line_start]), next_line=cursor.next_line(),
                opener_indent=opener_indent, specials=specials, multiline=multiline)


def suggestion(raw: str, plan: Plan, language: LanguageSpec | None, tree: tree_sitter.Tree | None, cursor: Cursor, *,
               hit_limit: bool = False) -> tuple[Suggestion | None, str]:
    """The suggestion to show for the model's answer `raw`, with its range and the document's
    line ends; or None and why (a key of completion.types.REASONS)."""
    text = clean(raw, plan, hit_limit=hit_limit)
    if not text:
        return None, why_empty(raw, plan, hit_limit=hit_limit)
    covered = covered_length(text, plan)
    eol = line_ending(cursor.text)
    if eol != "\n":
        text = text.replace("\n", eol)
    start, end = cursor.offset, cursor.offset + covered
    if language is not None and tree is not None and adds_errors(language, tree, cursor.text, start, end, text, plan):
        return None, "syntax-error"
    if language is not None and language.name == "python" and indentation_breaks(cursor, end, lf(text)):
        return None, "syntax-error"
    lines = cursor.lines
    return Suggestion(text, Range(lines.position(start), lines.position(end))), ""


def clean(raw: str, plan: Plan, *, hit_limit: bool = False) -> str:
    """The suggestion text to keep of the model's answer `raw` ("" to show nothing)."""
    text = lf(_before_special(raw, plan.specials))
    text = _cut_to_mode(text, plan)
    text = _cut_suffix_repeat(text, plan)
    text = _cut_loops(text, plan, hit_limit)
    text = text.rstrip() if plan.mode == "block" or not plan.tail.strip() else text
    if not text.strip() or echoes(text, plan):
        return ""
    if plan.head[-1:] in (" ", "\t") and plan.head.strip():
        text = text.lstrip(" \t")
    return _close_block(text, plan)


def echoes(text: str, plan: Plan) -> bool:
    """Whether `text` only repeats what precedes the cursor: the end of its line, or (on an
    empty line, or as the next line after a written one) the line above it."""
    first = text.strip("\n").split("\n")[0].strip()
    if not first or len(first.replace(" ", "")) < 3 and _WORD.search(first):
        return False        # a short word may well come twice (`x = x`); `#` after `#` is an echo
    if not text.startswith("\n") and plan.head.rstrip().endswith(first):
        return True
    above = plan.head if text.startswith("\n") else (plan.before.rstrip("\n").split("\n")[-1]
                                                     if not plan.head.strip() else "")
    return above.strip() == first


def why_empty(raw: str, plan: Plan, *, hit_limit: bool = False) -> str:
    """Which step of `clean` left nothing of `raw` (a key of completion.types.REASONS)."""
    text = _cut_to_mode(lf(_before_special(raw, plan.specials)), plan)
    if not text.strip():
        return "nothing"
    text = _cut_suffix_repeat(text, plan)
    if not text.strip():
        return "suffix-repeat"
    if echoes(text.rstrip(), plan):
        return "echo"
    return "repetition"


def finished(text: str, plan: Plan) -> bool:
    """Whether `clean` would already cut `text`, so no further token can change the answer
    (or the model is stuck repeating itself and more tokens are only time lost)."""
    if any(special in text for special in plan.specials):
        return True
    size, copies = _end_loop(text)
    if copies * size >= STUCK_CHARS:
        return True
    if "\n" not in text:
        return False
    if plan.mode == "line":
        lines = text.split("\n")
        first = _first_kept(lines, plan)
        if not lines[0].strip() and first == 0:
            return True                  # a line break first where no next line is offered: nothing
        complete = lines[:-1]
        if len(complete) <= first:
            return False                 # the line it keeps is still being written
        return (_kept_lines(complete, first, plan) is not None
                or len(complete) - first > MAX_CONTINUED_LINES)
    lines = text.split("\n")[:-1]  # complete lines only
    _, ended = _block_lines(lines, plan)
    if ended or _suffix_repeat_at(lines, plan) is not None:
        return True
    complete = "\n".join(lines)
    return _cut_loops(complete, plan, hit_limit=False) != complete


# ---------------------------------------------------------------------------------------------
# The steps

def _before_special(text: str, specials: tuple[str, ...]) -> str:
    cut = min((text.find(s) for s in specials if s in text), default=-1)
    return text if cut < 0 else text[:cut]


def _cut_to_mode(text: str, plan: Plan) -> str:
    lines = text.split("\n")
    if plan.mode == "line":
        first = _first_kept(lines, plan)
        kept = "\n".join(lines[first:first + (_kept_lines(lines, first, plan) or 1)])
        return kept if first == 0 else "\n" + kept
    kept, _ = _block_lines(lines, plan)
    return "\n".join(lines[:kept])


def _first_kept(lines: list[str], plan: Plan) -> int:
    """The line a *line* suggestion starts at: the first, or — when it begins with a line break
    at the end of a written line (`next_line_allowed`) — the next one the model wrote."""
    return 0 if lines[0].strip() or len(lines) == 1 or not plan.next_line_allowed else 1


def _kept_lines(lines: list[str], first: int, plan: Plan) -> int | None:
    """How many of `lines` from `first` a *line* suggestion keeps: 1; or, where that line opens a
    bracket it does not close, nothing follows the cursor on its line and the setting
    `multiline` is on, up to the line that closes it — None while none of the lines given
    (MAX_CONTINUED_LINES at most) does."""
    if plan.tail.strip() or not plan.multiline:
        return 1
    stack: list[str] = []
    for index in range(first, min(len(lines), first + 1 + MAX_CONTINUED_LINES)):
        _scan(lines[index] + "\n", stack)   # closers of what the cursor's line opened are passed over
        if not stack:
            return index - first + 1
    return None


def _block_lines(lines: list[str], plan: Plan) -> tuple[int, bool]:
    """How many of `lines` belong to the block body, and whether the block's end was seen.

    The block ends at the first non-blank line indented less than the body (the first body
    line sets the body's indentation, which must exceed the opener's). A line that closes
    what the cursor's line ends with (`}` before `}`) is kept, ending the block.
    """
    opener = indent_width(plan.opener_indent)
    body = None
    for index, line in enumerate(lines):
        full = plan.head + line if index == 0 else line
        if (index == 0 and plan.head.strip()) or not full.strip():
            continue  # the rest of the opener's line, or a blank line
        width = indent_width(full)
        if body is None and width <= opener:
            return index, True  # dedented before any body: nothing to keep
        if body is None:
            body = width
        elif width < body:
            return (index + 1 if _closes_tail(full, plan) else index), True
    return len(lines), False


def _closes_tail(line: str, plan: Plan) -> bool:
    closing, tail = line.strip(), plan.tail.strip()
    return bool(closing and tail) and not _WORD.search(closing) and (
        tail.startswith(closing) or closing.startswith(tail))


def _cut_suffix_repeat(text: str, plan: Plan) -> str:
    lines = text.split("\n")
    index = _suffix_repeat_at(lines, plan)
    return text if index is None else "\n".join(lines[:index])


def _suffix_repeat_at(lines: list[str], plan: Plan) -> int | None:
    """The first of `lines` (as it would read in the document) repeating the suffix's next line."""
    if not plan.next_line:
        return None
    for index, line in enumerate(lines):
        if repeats(plan.head + line if index == 0 else line, plan.next_line):
            return index
    return None


def repeats(line: str, target: str) -> bool:
    """Whether `line` is `target` again: same words; punctuation-only lines also same indentation
    (a nested `}` is not the block's own closing `}`)."""
    if not target.strip():
        return False
    if _WORD.search(target):
        return line.strip() == target.strip()
    return line.rstrip() == target.rstrip()


def _cut_loops(text: str, plan: Plan, hit_limit: bool) -> str:
    lines = text.split("\n")
    lines[0] = plan.head + lines[0]  # compare lines as they would read in the document
    for start in range(len(lines)):
        for period in range(1, MAX_LOOP_PERIOD + 1):
            end = start + LOOP_COPIES * period
            if end > len(lines):
                break
            block = lines[start:start + period]
            if not any(_WORD.search(line) for line in block):
                continue
            if all(lines[start + k * period:start + (k + 1) * period] == block
                   for k in range(1, LOOP_COPIES)):
                return "\n".join(lines[:start + period])[len(plan.head):]
    nested = _nested_repeat_at(lines)
    if nested is not None:
        return "\n".join(lines[:nested])[len(plan.head):]
    return _cut_char_loop(text) if hit_limit else text


def _nested_repeat_at(lines: list[str]) -> int | None:
    """The first line that reads the same as a line whose block it is nested in (every line from
    there to it indented deeper): the model opening the same block again inside itself. Lines
    of one word (`else:`, `try:`, `} else {`) nest in themselves in real code and are let be."""
    enclosing: list[tuple[int, str]] = []   # (indentation, text) of the lines still open above
    for index, line in enumerate(lines):
        text = line.strip()
        if not text:
            continue
        width = indent_width(line)
        while enclosing and enclosing[-1][0] >= width:
            enclosing.pop()
        if len(_WORDS.findall(text)) > 1 and any(text == above for _, above in enclosing):
            return index
        enclosing.append((width, text))
    return None


def _cut_char_loop(text: str) -> str:
    """Keep one copy of a short unit repeated at the very end of a truncated answer."""
    size, copies = _end_loop(text)
    if copies >= 4 and copies * size >= MIN_CHAR_LOOP:
        return text[:len(text) - (copies - 1) * size]
    return text


def _end_loop(text: str) -> tuple[int, int]:
    """(unit length, copies) of the unit of up to 16 characters repeated at the end of the
    text over the most characters; (0, 0) when nothing repeats."""
    best = (0, 0)
    for size in range(1, min(16, len(text) // 2) + 1):
        unit = text[-size:]
        copies = 1
        while text.endswith(unit * (copies + 1)):
            copies += 1
        if copies >= 2 and size * copies > best[0] * best[1]:
            best = (size, copies)
    return best


def _close_block(text: str, plan: Plan) -> str:
    """A multi-line body typed between `{` and `}` of one line ends on a line of its own, so the
    `}` left right of the cursor lands under its opener."""
    if plan.mode == "block" and plan.tail.strip() and "\n" in text and not covered_length(text, plan):
        return text + "\n" + plan.opener_indent
    return text


# ---------------------------------------------------------------------------------------------
# The range rule

_OPENERS = {"(": ")", "[": "]", "{": "}"}
_CLOSERS = {")": "(", "]": "[", "}": "{"}
_QUOTES = "\"'`"


def covered_length(text: str, plan: Plan) -> int:
    """How many characters right of the cursor the suggestion replaces.

    A suggestion is an insertion, except when it closes a bracket or quote opened before the
    cursor and the cursor's line already continues with that closing text (typically an
    auto-inserted `)`, `"` or `}`): then it replaces the longest common prefix of the cursor's
    tail and the suggestion from that closing character on, so the document never ends up
    with the closing text twice.
    """
    if not plan.tail.strip():
        return 0
    stack: list[str] = []
    _scan(plan.before + plan.head, stack)
    first = _scan(text, stack, floor=len(stack))
    if first is None:
        return 0
    closing, tail = text[first:], plan.tail
    length = 0
    while length < min(len(closing), len(tail)) and closing[length] == tail[length]:
        length += 1
    return length


def _scan(text: str, stack: list[str], floor: int | None = None) -> int | None:
    """Track brackets and quotes through `text` on `stack`; return the index of the first
    character closing one of the bottom `floor` entries (those opened before the cursor).

    Strings do not span lines here (an apostrophe in a comment must not swallow the code after
    it), so quotes still open at a line break are dropped.
    """
    escaped = False
    for index, char in enumerate(text):
        top = stack[-1] if stack else None
        if char == "\n":
            while stack and stack[-1] in _QUOTES:
                stack.pop()
            escaped = False
        elif top is not None and top in _QUOTES:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == top:
                if floor is not None and len(stack) <= floor:
                    return index
                stack.pop()
        elif char in _OPENERS or char in _QUOTES:
            stack.append(char)
        elif char in _CLOSERS and top == _CLOSERS[char]:
            if floor is not None and len(stack) <= floor:
                return index
            stack.pop()
    return None


# ---------------------------------------------------------------------------------------------
# Syntax

def adds_errors(language: LanguageSpec, tree: tree_sitter.Tree, text: str, start: int, end: int,
                inserted: str, plan: Plan | None = None) -> bool:
    """Whether replacing text[start:end] by `inserted` makes the document's syntax worse.

    Errors (ERROR nodes and MISSING tokens) are told apart by kind and start, mapped through
    the edit: an error of the edited tree that starts inside the inserted text, or that has no
    error of the same kind at the same place in the old tree, is new. An error the document
    already had at the cursor may grow over the suggestion (`x = foo(` completed with `a, b`
    stays as incomplete as it was). Two ways a suggestion leaves an unfinished statement worse
    are caught besides: it leaves the statement's error exactly as it was, writing something
    else after it (`self.` + `# -----`, `os.listdir(` + `import os`); or, in *line* mode at the
    end of the line, the error grows over the whole suggestion and no bracket is left open for
    a later line to close (`offset =` + ` self:`).
    """
    edited = tree.copy()
    edit_tree(edited, text, start, end, inserted)
    new_tree = language.parser().parse(tree_source(text[:start] + inserted + text[end:]), edited)
    if not new_tree.root_node.has_error:
        return False
    start_byte = len(encode(text[:start]))
    old_end = start_byte + len(encode(text[start:end]))
    new_end = start_byte + len(encode(inserted))
    old_errors = errors(tree.root_node)
    new_errors = errors(new_tree.root_node)
    old_starts = {(kind, byte) for kind, byte, _ in old_errors}
    for kind, byte, _ in new_errors:
        if start_byte < byte < new_end:
            return True
        old_byte = byte if byte <= start_byte else byte - new_end + old_end
        if (kind, old_byte) not in old_starts:
            return True
    unfinished = [(kind, byte) for kind, byte, stop in old_errors if kind == "ERROR" and byte < start_byte == stop]
    if any((kind, byte, start_byte) in new_errors for kind, byte in unfinished):
        return True                                     # the unfinished statement's error, untouched
    if plan is not None and plan.mode == "line" and not plan.tail.strip() and "\n" not in inserted.strip():
        starts = {byte for _, byte in unfinished}
        grown = any(kind == "ERROR" and byte in starts and stop >= new_end for kind, byte, stop in new_errors)
        stack: list[str] = []
        _scan(plan.before + plan.head + inserted, stack)
        return grown and not any(c in _OPENERS for c in stack)   # an open bracket: a later line may close it
    return False


def indentation_breaks(cursor: Cursor, end: int, inserted: str) -> bool:
    """Whether Python would refuse the indentation of a line the suggestion begins or indents:
    an unexpected indent, no indented block after a header's colon, or a dedent to a level no
    enclosing block has. `inserted` ("\\n" line ends) replaces cursor.text[cursor.offset:end],
    `end` on the cursor's line.

    Python's own tokenizer reads the lines from the nearest statement at column 0 above the
    cursor to the cursor's line once (`_line_start`, kept for the next keystrokes on that line):
    the enclosing indentation levels and whether the line before opened a block. The lines the
    suggestion touches are then read after a few lines that rebuild that state. Only lines that
    start inside the suggestion, or the cursor's line when the suggestion writes its first code,
    are judged; where the tokenizer cannot tell (an unclosed string or bracket, no statement at
    column 0 within INDENT_SCAN_CHARS), the suggestion passes.
    """
    head_blank = not cursor.head.strip()
    if not head_blank and "\n" not in inserted:
        return False
    first = _statement_at_column_zero(cursor)
    if first is None:
        return False
    text = cursor.text
    state = _line_start(lf(text[cursor.lines.starts[first]:cursor.line_start]))
    if state is None:
        return False
    levels, opened = state
    rebuilt = "".join(f"{level}if 1:\n" for level in levels[:-1]) + f"{levels[-1]}{'if 1:' if opened else 'pass'}\n"
    source = rebuilt + lf(text[cursor.line_start:cursor.offset]) + inserted + lf(text[end:cursor.line_end]) + "\n"
    judged = len(levels) + (1 if head_blank else 2)   # the first judged line, 1-based
    last, opened, indented = "", False, False
    try:
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            kind, row = token.type, token.start[0]
            if kind == tokenize.INDENT:
                if row >= judged and last != ":":
                    return True                          # unexpected indent
                indented = True
            elif kind == tokenize.NEWLINE:
                opened, indented = last == ":", False
            elif kind not in (tokenize.NL, tokenize.COMMENT, tokenize.DEDENT, tokenize.ENDMARKER):
                if opened and not indented and row >= judged:
                    return True                          # expected an indented block
                opened, last = False, token.string
    except IndentationError as e:
        return (e.lineno or 0) >= judged                 # unindent does not match any outer level
    except (SyntaxError, tokenize.TokenError):
        return False
    return False


@functools.lru_cache(maxsize=64)
def _line_start(lines: str) -> tuple[tuple[str, ...], bool] | None:
    """Python's state after `lines` (whole lines from a statement at column 0): the indentation
    of each enclosing level, outermost first, and whether the last logical line opened a block;
    None inside a bracket, a string or a continued line, or when the tokenizer refuses."""
    levels, opened, last, depth = [""], False, "", 0
    count = lines.count("\n")
    try:
        for token in tokenize.generate_tokens(io.StringIO(lines).readline):
            if token.start[0] > count:
                break                                    # what the tokenizer adds at the end
            if token.type == tokenize.INDENT:
                levels.append(token.string)
            elif token.type == tokenize.DEDENT:
                levels.pop()
            elif token.type == tokenize.NEWLINE:
                opened = last == ":"
            elif token.type == tokenize.OP and token.string in "([{":
                depth += 1
            elif token.type == tokenize.OP and token.string in ")]}":
                depth -= 1
            if token.type not in (tokenize.NL, tokenize.COMMENT, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT):
                last = token.string
    except (SyntaxError, tokenize.TokenError):
        return None
    return (tuple(levels), opened) if depth == 0 else None


def _statement_at_column_zero(cursor: Cursor) -> int | None:
    """The nearest line at or above the cursor's that starts with a statement at column 0 (not
    a comment, a string or a closing bracket), within INDENT_SCAN_CHARS characters."""
    lines, floor = cursor.lines, cursor.offset - INDENT_SCAN_CHARS
    for line in range(cursor.line, -1, -1):
        start = lines.starts[line]
        if start < floor:
            return None
        char = cursor.text[start:start + 1]
        if (char.isalpha() or char in "_@") and (line < cursor.line or start < cursor.offset):
            return line
    return None


def errors(node: tree_sitter.Node) -> list[tuple[str, int, int]]:
    """(kind, start byte, end byte) of the ERROR and MISSING nodes under `node`; only subtrees
    flagged has_error are visited."""
    found, pending = [], [node]
    while pending:
        node = pending.pop()
        if not node.has_error:
            continue
        if node.is_error or node.is_missing:
            found.append(("MISSING " + node.type if node.is_missing else "ERROR", node.start_byte, node.end_byte))
        pending.extend(node.children)
    return found
