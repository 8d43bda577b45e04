"""Documents: UTF-16 positions, incremental trees equal to fresh parses, the workspace."""
from __future__ import annotations

import re

import pytest
from hypothesis import given, settings, strategies as st

from completion.document import Document, Lines, Workspace, parse
from completion.errors import DocumentLimit, InvalidPosition, UnknownDocument
from completion.languages import language_for
from completion.types import Position, Range, TextChange

# ---------------------------------------------------------------------------------------------
# Positions


@pytest.mark.parametrize("text, position, offset", [
    ("abc", Position(0, 2), 2),
    ("a😀b", Position(0, 1), 1),
    ("a😀b", Position(0, 3), 2),            # the emoji is two UTF-16 units, one str index
    ("a😀b", Position(0, 4), 3),
    ("中文x\n😀😀y", Position(1, 4), 6),     # CJK is one unit each; two emoji are four
    ("x = 1\r\ny = 2\r\n", Position(1, 5), 12),
    ("x\r\n\r\nz", Position(2, 0), 5),      # an empty CRLF line
    ("a\rb\nc", Position(1, 1), 3),         # a lone CR ends a line for LSP
    ("a\u2028b", Position(0, 3), 3),         # U+2028 does not end a line for LSP
    ("last line", Position(0, 9), 9),
    ("", Position(0, 0), 0),
])
def test_offset_of_position(text, position, offset):
    lines = Lines(text)
    assert lines.offset(position) == offset
    assert lines.position(offset) == position


@pytest.mark.parametrize("text, position, message", [
    ("ab\ncd", Position(2, 0), "Line 2 is past the end of the document, which has 2 lines."),
    ("ab\ncd", Position(0, 3), "Character 3 is past the end of line 0, which is 2 UTF-16 code units long."),
    ("a😀", Position(0, 2), "Character 2 of line 0 falls inside a surrogate pair."),
    ("x\r\ny", Position(0, 2), "Character 2 is past the end of line 0, which is 1 UTF-16 code units long."),
])
def test_positions_outside_the_text_are_refused_with_a_sentence(text, position, message):
    with pytest.raises(InvalidPosition) as error:
        Lines(text).offset(position)
    assert str(error.value) == message
    assert isinstance(error.value, ValueError)


def test_content_changes_clamp_positions_as_lsp_says():
    lines = Lines("ab\ncd")
    assert lines.offset(Position(0, 99), strict=False) == 2
    assert lines.offset(Position(7, 0), strict=False) == 5


_ALPHABET = st.sampled_from(["a", "z", " ", "\t", "😀", "中", "é", "\n", "\r\n", "\r", "(", "}"])


@settings(max_examples=60, deadline=None)
@given(st.lists(_ALPHABET, max_size=40))
def test_positions_round_trip_through_utf16(pieces):
    text = "".join(pieces)
    lines = Lines(text)
    for line in range(lines.count):
        units = len(lines.line_text(line).encode("utf-16-le")) // 2
        for character in range(units + 1):
            position = Position(line, character)
            try:
                offset = lines.offset(position)
            except InvalidPosition:  # the second half of a surrogate pair
                continue
            assert lines.position(offset) == position
    for offset in range(len(text) + 1):
        if 0 < offset < len(text) and text[offset - 1:offset + 1] == "\r\n":
            continue  # between CR and LF is no position
        assert lines.offset(lines.position(offset)) == offset


# ---------------------------------------------------------------------------------------------
# Incremental parsing


def _shape(tree) -> list[tuple]:
    """Every node of a tree with its kind and coordinates, in order."""
    out, cursor = [], tree.walk()
    while True:
        node = cursor.node
        out.append((node.type, node.start_byte, node.end_byte, tuple(node.start_point),
                    tuple(node.end_point), node.is_missing))
        if cursor.goto_first_child():
            continue
        while not cursor.goto_next_sibling():
            if not cursor.goto_parent():
                return out


def _oracle_apply(text: str, change: TextChange) -> str:
    """Apply an LSP change by counting UTF-16 code units directly (independent of Lines)."""
    if change.range is None:
        return change.text
    units = text.encode("utf-16-le", "surrogatepass")
    starts = [0] + [m.end() for m in re.finditer(r"\r\n|\r|\n", text)]
    unit_starts = [len(text[:s].encode("utf-16-le")) // 2 for s in starts]

    def unit_offset(position: Position) -> int:
        if position.line >= len(starts):
            return len(units) // 2
        line_text = re.split(r"\r\n|\r|\n", text[starts[position.line]:])[0]
        width = len(line_text.encode("utf-16-le")) // 2
        return unit_starts[position.line] + min(position.character, width)

    start, end = unit_offset(change.range.start), unit_offset(change.range.end)
    spliced = units[:2 * start] + change.text.encode("utf-16-le") + units[2 * end:]
    return spliced.decode("utf-16-le", "surrogatepass")


def _change(l1, c1, l2, c2, text):
    return TextChange(text, Range(Position(l1, c1), Position(l2, c2)))


EDIT_CASES = {
    "python emoji": ("python", 'def f():\n    s = "😀😀"\n    return s\n',
                     [_change(1, 11, 1, 11, "中文"), _change(2, 11, 2, 11, " + '🎉'")]),
    "python CRLF": ("python", "def f(x):\r\n    return x\r\n\r\nprint(f(1))\r\n",
                    [_change(1, 12, 1, 12, " + 1\r\n    pass"), _change(0, 6, 0, 7, "value")]),
    "javascript CJK": ("javascript", "const 名前 = '世界';\nfunction f() {\n  return 名前;\n}\n",
                       [_change(2, 13, 2, 13, " + '😀'"), _change(1, 14, 1, 14, "\n  let x = 1;")]),
    "rust multi-line delete": ("rust", "fn main() {\n    let a = \"é\";\n    let b = 2;\n}\n",
                               [_change(1, 4, 2, 4, ""), _change(0, 0, 0, 0, "// 😀\n")]),
    "go lone CR": ("go", "package main\rfunc f() {}\n", [_change(1, 10, 1, 10, "return")]),
    "python lone CR ends": ("python", "def f(x):\r    return x\r\rprint(f(1))\r",
                            [_change(1, 12, 1, 12, " + 1\r    pass"), _change(0, 6, 0, 7, "value")]),
    "a lone CR that an LF joins": ("python", "a = 1\rb = 2\r", [_change(1, 0, 1, 0, "\nc = 3"),
                                                               _change(0, 5, 1, 0, "")]),
    "full replacement": ("python", "x = 1\n", [TextChange("y = '😀'\n"), _change(0, 0, 0, 1, "z")]),
}


@pytest.mark.parametrize("language, text, changes", EDIT_CASES.values(), ids=list(EDIT_CASES))
def test_incremental_tree_equals_fresh_parse(language, text, changes):
    document = Document("file:///t", language, text, 1)
    expected = text
    for version, change in enumerate(changes, start=2):
        document.apply([change], version)
        expected = _oracle_apply(expected, change)
    assert document.text == expected
    assert document.version == len(changes) + 1
    assert _shape(document.tree) == _shape(parse(document.language, expected))


@pytest.mark.parametrize("eol", ["\n", "\r\n", "\r"])
def test_tree_rows_are_lsp_lines_whatever_the_line_ends(eol):
    """A lone CR ends a line for LSP; tree-sitter counts rows at LF only, so a file in CR line
    ends was one row of 100,000 definitions (an 11 s completion): its rows are LSP's lines."""
    text = eol.join(["def f(x):", "    return x", "", "def g():", "    pass", ""])
    document = Document("file:///t.py", "python", text, 1)
    assert [(node.start_point[0], node.end_point[0]) for node in document.tree.root_node.children] == [(0, 1), (3, 4)]
    assert not document.tree.root_node.has_error
    document.apply([_change(4, 8, 4, 8, eol + "    return 1")], 2)
    assert _shape(document.tree) == _shape(parse(document.language, document.text))
    assert document.tree.root_node.children[1].end_point[0] == 5


def test_several_changes_in_one_notification_apply_in_order():
    document = Document("file:///t", "python", "a = 1\nb = 2\n", 1)
    document.apply([_change(0, 4, 0, 5, "😀"), _change(0, 6, 0, 6, "x")], 2)  # ranges after the first
    assert document.text == "a = 😀x\nb = 2\n"
    assert _shape(document.tree) == _shape(parse(document.language, document.text))


_FRAGMENTS = st.sampled_from([
    "x", "😀", "中文", "é", " ", "\n", "\r\n", "\r", "    ", "def f(a):", "return a", "(", ")", ":",
    "'s'", "# c", "if x:", "1 + 2", "[", "]", "{", "}",
])


@st.composite
def _edits(draw):
    text = "".join(draw(st.lists(_FRAGMENTS, max_size=25)))
    changes = []
    current = text
    for _ in range(draw(st.integers(1, 4))):
        lines = Lines(current)
        a = draw(st.integers(0, len(current)))
        b = draw(st.integers(a, min(len(current), a + 12)))
        start, end = lines.position(a), lines.position(b)
        change = TextChange("".join(draw(st.lists(_FRAGMENTS, max_size=4))), Range(start, end))
        changes.append(change)
        current = _oracle_apply(current, change)
    return text, changes


@settings(max_examples=60, deadline=None)
@given(_edits())
def test_random_edits_keep_text_and_tree_equal_to_a_fresh_parse(case):
    text, changes = case
    document = Document("file:///t.py", "python", text, 0)
    expected = text
    for version, change in enumerate(changes, start=1):
        document.apply([change], version)
        expected = _oracle_apply(expected, change)
    assert document.text == expected
    assert _shape(document.tree) == _shape(parse(document.language, expected))
    assert document.lines.starts == Lines(expected).starts   # kept and shifted, not rescanned


@settings(max_examples=200, deadline=None)
@given(_edits())
def test_line_starts_after_edits_with_lone_and_paired_line_ends_are_a_fresh_scans(case):
    """An edit next to a CR may pair it with an LF or part them; several changes in one
    notification each apply to the text the last one left."""
    text, changes = case
    document = Document("file:///t.txt", "plaintext", text, 0)
    document.apply(changes, 1)
    expected = text
    for change in changes:
        expected = _oracle_apply(expected, change)
    assert document.text == expected and document.lines.starts == Lines(expected).starts


# ---------------------------------------------------------------------------------------------
# Documents and the workspace


def test_unknown_language_is_plain_text_without_a_tree():
    document = Document("file:///notes.txt", "plaintext", "hello", 1)
    assert document.language is None and document.tree is None
    document.apply([_change(0, 5, 0, 5, " world")], 2)
    assert document.text == "hello world"


def test_language_falls_back_to_the_file_extension():
    assert Document("file:///a/b.rs", "", "fn main() {}", 1).language.name == "rust"
    assert Document("untitled:1", "typescriptreact", "", 1).language.name == "tsx"


def test_snapshot_and_state_for():
    document = Document("file:///a.py", "python", "x = 1\n", 3, path="a.py")
    snapshot = document.snapshot()
    assert (snapshot.uri, snapshot.language_id, snapshot.text, snapshot.version, snapshot.path) == (
        "file:///a.py", "python", "x = 1\n", 3, "a.py")
    assert document.state_for(snapshot).tree is document.tree
    document.apply([_change(0, 4, 0, 5, "2")], 4)
    assert document.state_for(snapshot) is None          # the document moved on
    assert snapshot.text == "x = 1\n"                    # the snapshot did not


def test_a_published_tree_is_never_edited_in_place():
    document = Document("file:///a.py", "python", "def f():\n    pass\n", 1)
    before = document.tree
    shape = _shape(before)
    document.apply([_change(0, 0, 0, 0, "import os\n")], 2)
    assert _shape(before) == shape


@settings(max_examples=60, deadline=None)
@given(_edits(), st.lists(st.booleans(), min_size=4, max_size=4))
def test_changes_nobody_reads_are_parsed_once_when_read(case, read):
    """A change only edits the tree; the parse waits for the first reader and takes every edit
    since at once. Whichever versions were read, each tree equals a fresh parse of its text,
    and a version nobody read was never parsed."""
    text, changes = case
    document = Document("file:///t.py", "python", text, 0)
    states, expected = [], text
    for version, (change, look) in enumerate(zip(changes, read), start=1):
        document.apply([change], version)
        expected = _oracle_apply(expected, change)
        states.append((document.state, expected, look))
        if look:
            assert _shape(document.tree) == _shape(parse(document.language, expected))
    for state, _, look in states[:-1]:
        assert state.parsed == look
    last, last_text, _ = states[-1]
    assert _shape(last.tree) == _shape(parse(document.language, last_text))


def test_workspace_open_change_close():
    closed = []
    workspace = Workspace(on_close=closed.append)
    workspace.open("file:///a.py", "python", "a = 1\n", 1, path="a.py")
    workspace.change("file:///a.py", 2, [_change(0, 4, 0, 5, "2")])
    assert workspace.snapshot("file:///a.py").text == "a = 2\n"
    assert workspace.get("file:///a.py").version == 2
    assert len(workspace) == 1 and [d.uri for d in workspace.documents()] == ["file:///a.py"]
    workspace.close("file:///a.py")
    assert workspace.get("file:///a.py") is None and closed == ["file:///a.py"]


def test_unknown_documents_raise_a_readable_key_error():
    workspace = Workspace()
    with pytest.raises(UnknownDocument) as error:
        workspace.change("file:///nope.py", 2, [TextChange("x")])
    assert isinstance(error.value, KeyError)
    assert str(error.value) == "The document file:///nope.py is not open."
    with pytest.raises(KeyError):
        workspace.snapshot("file:///nope.py")


def test_reopening_a_document_replaces_it_and_frees_its_state():
    closed = []
    workspace = Workspace(on_close=closed.append)
    workspace.open("file:///a.py", "python", "a", 1)
    workspace.open("file:///a.py", "python", "b", 1)
    assert workspace.snapshot("file:///a.py").text == "b" and closed == ["file:///a.py"]


def test_language_for_maps_ids_and_extensions():
    assert language_for("javascriptreact").name == "javascript"
    assert language_for("shellscript").name == "bash"
    assert language_for("plaintext", "file:///x/script.lua").name == "lua"
    assert language_for("markdown", "README.md") is None


def test_the_workspace_keeps_documents_up_to_its_bounds_and_those_whole():
    workspace = Workspace(max_documents=3, max_chars=100)
    for name in "abc":
        workspace.open(f"file:///{name}.py", "python", "x = 1\n", 1)
    with pytest.raises(DocumentLimit, match=r"^The document file:///d.py is not kept: 3 documents are open"):
        workspace.open("file:///d.py", "python", "y = 2\n", 1)
    workspace.open("file:///a.py", "python", "x = 2\n", 2)            # reopening is no new document
    workspace.close("file:///c.py")
    workspace.open("file:///d.py", "python", "y = 2\n", 1)            # room again
    with pytest.raises(DocumentLimit, match="more than the 100"):
        workspace.change("file:///d.py", 2, [TextChange("z" * 90)])     # grows past: dropped
    assert workspace.get("file:///d.py") is None and workspace.chars == 12
    assert {d.uri: d.text for d in workspace.documents()} == {"file:///a.py": "x = 2\n", "file:///b.py": "x = 1\n"}
    with pytest.raises(DocumentLimit, match="101 characters, more than the 100 the server keeps; close some"):
        workspace.open("file:///e.txt", "plaintext", "e" * 89, 1)
    assert workspace.chars == 12

