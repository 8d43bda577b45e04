"""Context: the mode decided with tree-sitter, token-budgeted windows, related snippets."""
from __future__ import annotations

import pytest

from completion.context import build_context, decide_mode, editor_indent
from completion.related import RelatedIndex, Source
from completion.windows import Cursor, TokenCounter, choose_windows, max_chars
from completion.document import Lines, parse
from completion.languages import language_for
from fakes import FakeTokenizer, cursor_at


def _cursor(language_id: str, marked: str):
    text, position = cursor_at(marked)
    language = language_for(language_id)
    tree = parse(language, text) if language else None
    lines = Lines(text)
    return language, tree, Cursor(lines, lines.offset(position))


def _mode(language_id: str, marked: str, multiline: bool = True) -> str:
    language, tree, cursor = _cursor(language_id, marked)
    return decide_mode(language, tree, cursor, multiline)


# Each case is a real editing situation: (language, text with █ at the cursor, mode).
MODE_CASES = {
    # Python
    "py: empty function body at end of file": ("python", "def add(a, b):█", "block"),
    "py: empty body, more code below": ("python", "def add(a, b):█\n\nprint(add(1, 2))\n", "block"),
    "py: blank line of an empty body": ("python", "def add(a, b):\n    █\n\nx = 1\n", "block"),
    "py: method of a class": ("python", "class A:\n    def m(self):█\n\n    def n(self):\n        pass\n", "block"),
    "py: if header": ("python", "for x in xs:\n    if x > 2:█\n    print(x)\n", "block"),
    "py: else after a body": ("python", "if a:\n    b()\nelse:█\n", "block"),
    "py: header whose body exists": ("python", "def add(a, b):█\n    return a + b\n", "none"),
    "py: blank line after a statement": ("python", "def f():\n    x = 1\n    █\n", "line"),
    "py: dict entry is not a block": ("python", "d = {'a':█\n", "line"),
    "py: lambda is not a block": ("python", "f = lambda x:█\n", "line"),
    "py: colon inside a string": ("python", "s = 'a:█'\n", "line"),
    "py: after an assignment": ("python", "total = █\n", "line"),
    "py: inside a call, closer follows": ("python", "print(█)\n", "line"),
    "py: inside an identifier": ("python", "pri█nt(x)\n", "none"),
    "py: before an argument": ("python", "print(█x)\n", "none"),
    "py: code follows on the line": ("python", "x = foo(█)  # note\n", "none"),
    "py: in a comment": ("python", "# compute the █\n", "line"),
    # JavaScript / TypeScript
    "js: function body, closing brace below": ("javascript", "function f() {█\n}\n", "block"),
    "js: auto-closed braces": ("javascript", "function f() {█}\n", "block"),
    "js: arrow body on next line": ("javascript", "const f = (x) =>█\n", "block"),
    "js: callback in a call": ("javascript", "items.forEach((item) => {█});\n", "block"),
    "js: object literal": ("javascript", "const o = {█\n", "block"),
    "js: header whose body exists": ("javascript", "if (x) {█\n  go();\n}\n", "none"),
    "js: call arguments": ("javascript", "console.log(█);\n", "line"),
    "js: statement ended, the next line may follow": ("javascript", "let x = 1;█\n", "line"),
    "js: for header is not ended": ("javascript", "for (let i = 0;█\n", "line"),
    "js: inside a $identifier": ("javascript", "$█el.hide()\n", "none"),
    "ts: interface body": ("typescript", "interface User {█\n}\n", "block"),
    "ts: typed function, auto-closed": ("typescript", "function f(a: number): number {█}\n", "block"),
    "ts: typed declaration": ("typescript", "const name: string = █\n", "line"),
    "tsx: component body": ("typescriptreact", "function App() {█\n}\n", "block"),
    # Go
    "go: function body": ("go", "package main\n\nfunc main() {█\n}\n", "block"),
    "go: if err": ("go", "package main\n\nfunc f() error {\n\tif err != nil {█\n\t}\n\treturn nil\n}\n", "block"),
    "go: short declaration": ("go", "package main\n\nfunc f() {\n\tx := █\n}\n", "line"),
    "go: call": ("go", "package main\n\nfunc f() {\n\tfmt.Println(█)\n}\n", "line"),
    # Rust
    "rust: fn body at end of file": ("rust", "fn main() {█", "block"),
    "rust: match arms": ("rust", "fn f(x: u8) {\n    match x {█\n    }\n}\n", "block"),
    "rust: impl block": ("rust", "impl Foo {█\n}\n", "block"),
    "rust: macro arguments": ("rust", "fn f() {\n    let v = vec![█];\n}\n", "line"),
    # Others
    "java: method body": ("java", "class A {\n  void f() {█\n  }\n}\n", "block"),
    "c: function body": ("c", "int main(void) {█\n}\n", "block"),
    "cpp: class body": ("cpp", "class B {█};\n", "block"),
    "lua: function": ("lua", "function greet(name)█\n", "block"),
    "lua: then": ("lua", "if x then█\n", "block"),
    "lua: call": ("lua", "print(█)\n", "line"),
    "bash: then": ("shellscript", "if [ -f x ]; then█\n", "block"),
    "bash: do": ("shellscript", "for a in b; do█\n", "block"),
    "bash: command": ("shellscript", "echo █\n", "line"),
    # Plain text
    "text: inside a word": ("plaintext", "hello wor█ld\n", "none"),
    "text: end of line": ("plaintext", "hello █\n", "line"),
    "text: no blocks without a grammar": ("plaintext", "section {█\n", "line"),
}


@pytest.mark.parametrize("language_id, marked, mode", MODE_CASES.values(), ids=list(MODE_CASES))
def test_mode(language_id, marked, mode):
    assert _mode(language_id, marked) == mode


# A cursor at the first column of a blank line: the indentation an editor's auto-indent would
# have given it, which the service completes after (and shows as the suggestion's start).
INDENT_CASES = {
    "between two statements of a body": ("python", "def f():\n    x = 1\n█\n    return x\n", "    "),
    "after a block's last line, more of the outer block below": (
        "python", "def f(xs):\n    for x in xs:\n        g(x)\n█\n    return xs\n", "        "),
    "an empty body: one level deeper than its header": ("python", "class A:\n    def m(self):\n█\n", "        "),
    "a written body: its indentation": ("python", "if a:\n█\n      b()\n", "      "),
    "a level of two spaces": ("python", "def f():\n  if a:\n    b()\n  if c:\n█\n", "    "),
    "a level of a tab": ("python", "def f():\n\tif a:\n█\n", "\t\t"),
    "braces": ("javascript", "function f() {\n  let a = 1;\n  if (a) {\n█\n}\n", "    "),
    "dedented on purpose after a definition": ("python", "def f():\n    return 1\n\n█\n\ndef g():\n    pass\n", ""),
    "at the end of the file after a definition": ("python", "def f():\n    return 1\n\n█", ""),
    "module level": ("python", "import os\n█\nx = 1\n", ""),
    "a cursor after some typed indentation": ("python", "def f():\n    x = 1\n  █\n    return x\n", ""),
    "a cursor before text": ("python", "def f():\n    x = 1\n█y = 2\n    return x\n", ""),
}


@pytest.mark.parametrize("language_id, marked, indent", INDENT_CASES.values(), ids=INDENT_CASES.keys())
def test_the_indentation_an_editor_would_have_put_at_the_first_column(language_id, marked, indent):
    assert editor_indent(*_cursor(language_id, marked)) == indent


def test_multiline_off_turns_blocks_into_lines():
    assert _mode("python", "def add(a, b):█", multiline=False) == "line"
    assert _mode("python", "pri█nt()", multiline=False) == "none"


# ---------------------------------------------------------------------------------------------
# Windows

COUNT = TokenCounter(FakeTokenizer().count)


def _numbered(n: int) -> str:
    return "".join(f"value_{i} = compute({i}, {i + 1})\n" for i in range(n))


def _window_cursor(text: str, line: int):
    lines = Lines(text)
    return Cursor(lines, lines.starts[line] + 4)


@pytest.mark.parametrize("budget", [40, 100, 333])
@pytest.mark.parametrize("line", [0, 3, 50, 99])
def test_windows_are_whole_lines_within_budget_and_maximal(budget, line):
    text = _numbered(100)
    cursor = _window_cursor(text, line)
    windows = choose_windows(cursor, budget, 0.75, COUNT)
    prefix, suffix = text[windows.start:cursor.offset], text[cursor.offset:windows.end]
    assert windows.prefix_tokens + windows.suffix_tokens <= budget
    assert (windows.prefix_tokens, windows.suffix_tokens) == (COUNT(prefix), COUNT(suffix))
    assert windows.start == 0 or text[windows.start - 1] == "\n"         # cut at a line start
    assert windows.end == len(text) or text[windows.end] == "\n"         # and at a line end
    free = budget - windows.prefix_tokens - windows.suffix_tokens
    one_line = COUNT("value_10 = compute(10, 11)\n")
    grows_up = windows.start > 0
    grows_down = windows.end < len(text) - 1
    assert not (grows_up and grows_down and free >= one_line)           # no room left for a line


def test_prefix_gets_three_quarters_in_the_middle_of_a_file():
    text = _numbered(400)
    windows = choose_windows(_window_cursor(text, 200), 400, 0.75, COUNT)
    one_line = COUNT("value_200 = compute(200, 201)\n")
    assert 300 - one_line < windows.prefix_tokens <= 300
    assert 100 - one_line < windows.suffix_tokens <= 400 - windows.prefix_tokens


def test_a_short_side_leaves_its_share_to_the_other():
    text = _numbered(400)
    top = choose_windows(_window_cursor(text, 2), 400, 0.75, COUNT)
    assert top.start == 0 and top.suffix_tokens > 250
    bottom = choose_windows(_window_cursor(text, 397), 400, 0.75, COUNT)
    assert bottom.end == len(text) and bottom.prefix_tokens > 350


def test_an_overlong_cursor_line_is_cut_by_characters():
    text = "x = [" + ", ".join(str(i) for i in range(500)) + "]\n"
    lines = Lines(text)
    cursor = Cursor(lines, len(text) - 3)
    windows = choose_windows(cursor, 60, 0.75, COUNT)
    assert windows.prefix_tokens + windows.suffix_tokens <= 60 and windows.start > 0
    assert text[windows.start:cursor.offset].endswith("498, 49")


@pytest.mark.parametrize("where", ["end of the line", "middle of the line", "line after", "line before"])
def test_a_line_of_megabytes_is_cut_by_characters_before_it_is_tokenized(where):
    """The work is bounded by the budget (at most max_chars(budget) characters a window, a binary
    search over them), not by the line: a 7.65 MB line took 9.6 s to tokenize."""
    line = "x = [" + "1, " * (1 << 20)
    text = {"line after": f"{line}\ny = ", "line before": f"y = \n{line}"}.get(where, f"import os\n{line}\n")
    lines = Lines(text)
    offset = {"end of the line": len(text) - 1, "middle of the line": len(text) // 2,
              "line after": len(text), "line before": 4}[where]
    count = TokenCounter(FakeTokenizer().count)
    windows = choose_windows(Cursor(lines, offset), 400, 0.75, count)
    assert windows.prefix_tokens + windows.suffix_tokens <= 400
    assert windows.end - windows.start <= max_chars(400)
    assert count.chars <= 20 * max_chars(400) < len(line) // 2


# ---------------------------------------------------------------------------------------------
# Related snippets

CART = '''\
from decimal import Decimal


def compute_total(items, tax_rate):
    """The price of all items, tax included."""
    subtotal = sum(item.price * item.quantity for item in items)
    return subtotal * (1 + tax_rate)


def format_price(amount):
    return f"{amount:.2f} EUR"
'''

CHECKOUT = '''\
from cart import compute_total, format_price


def checkout(order):
    total = compute_total(order.items, █
'''

UNRELATED = "\n".join(f"def draw_sprite_{i}(screen, sprite):\n    screen.blit(sprite)\n" for i in range(10))

SIMILAR = '''\
def refund(order):
    total = compute_total(order.items, order.tax_rate)
    amount = format_price(total)
    order.refund(amount)
    return amount
'''


def _sources(*docs):
    out = []
    for uri, path, text in docs:
        language = language_for("", path)
        out.append(Source(uri, path, language, text, 1, parse(language, text)))
    return out


def _context(marked: str, others, *, budget=1500, snippet_budget=400, path="checkout.py"):
    text, position = cursor_at(marked)
    language = language_for("python")
    lines = Lines(text)
    cursor = Cursor(lines, lines.offset(position))
    current = Source("file:///checkout.py", path, language, text, 1, parse(language, text))
    return build_context("line", current, cursor, others, RelatedIndex(), budget=budget,
                         snippet_budget=snippet_budget, prefix_fraction=0.75, count=COUNT)


def test_definitions_of_names_used_at_the_cursor_come_from_open_documents():
    others = _sources(("file:///cart.py", "cart.py", CART), ("file:///game.py", "game.py", UNRELATED))
    context = _context(CHECKOUT, others)
    definitions = [s for s in context.snippets if s.kind == "definition"]
    assert [s.path for s in definitions] == ["cart.py", "cart.py"]
    assert definitions[-1].text.startswith("def compute_total(items, tax_rate):")  # nearest use last
    assert any(s.text.startswith("def format_price(amount):") for s in definitions)
    assert all("draw_sprite" not in s.text for s in context.snippets)


def test_windows_of_other_documents_are_ranked_by_identifier_overlap():
    others = _sources(("file:///game.py", "game.py", UNRELATED), ("file:///refund.py", "refund.py", SIMILAR))
    context = _context(CHECKOUT, others)
    windows = [s for s in context.snippets if s.kind == "window"]
    assert [s.path for s in windows] == ["refund.py"]
    assert "order.refund(amount)" in windows[0].text


def test_snippets_stay_within_their_budget():
    others = _sources(("file:///cart.py", "cart.py", CART), ("file:///refund.py", "refund.py", SIMILAR))
    for snippet_budget in (0, 30, 60, 400):
        context = _context(CHECKOUT, others, snippet_budget=snippet_budget)
        used = sum(COUNT(f"# {s.path}\n{s.text}\n") for s in context.snippets)
        assert used <= snippet_budget
    assert _context(CHECKOUT, others, snippet_budget=0).snippets == ()


def test_definitions_already_in_the_window_or_around_the_cursor_are_not_repeated():
    text = CART + "\n\ndef receipt(items):\n    return format_price(compute_total(items, █\n"
    context = _context(text, [], path="cart.py")
    assert context.snippets == ()  # both definitions are in the prefix window
    far = CART + "\n" + _numbered(150) + "\ndef receipt(items):\n    return format_price(█\n"
    context = _context(far, [], budget=300, snippet_budget=150, path="cart.py")
    assert [s.text.splitlines()[0] for s in context.snippets] == ["def format_price(amount):"]
    assert [s.text.splitlines()[0] for s in _context(far, [], budget=300).snippets
            if "receipt" in s.text] == []  # the function being written is never a snippet


def test_windows_shrink_by_what_snippets_use():
    others = _sources(("file:///cart.py", "cart.py", CART))
    padded = _numbered(60) + CHECKOUT
    without = _context(padded, [], budget=200)
    with_snippets = _context(padded, others, budget=200, snippet_budget=100)
    used = sum(s.tokens for s in with_snippets.snippets)
    assert used > 0
    assert COUNT(with_snippets.prefix) + COUNT(with_snippets.suffix) <= 200 - used
    assert len(with_snippets.prefix) < len(without.prefix)
