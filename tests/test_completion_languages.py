"""Every bundled grammar loads, parses, and finds definitions with its query."""
from __future__ import annotations

from pathlib import Path

import jinja2
import pytest

from completion import related
from completion.related import RelatedIndex, Source, query_definitions
from completion.document import parse, tree_source
from completion.languages import EXTENSIONS, LANGUAGE_IDS, LANGUAGES, language_for

SAMPLES = {
    "python": ("class Cart:\n    def total(self):\n        return 0\n\nRATE = 2\n",
               {"Cart", "total", "RATE"}),
    "javascript": ("function add(a, b) { return a + b; }\nclass Shop { buy() {} }\n"
                   "const mul = (a, b) => a * b;\n", {"add", "Shop", "buy", "mul"}),
    "typescript": ("interface User { id: number }\ntype Id = number;\nenum Color { Red }\n"
                   "function load(id: Id): User { return { id }; }\n", {"User", "Id", "Color", "load"}),
    "tsx": ("const App = () => <div/>;\nfunction Page(): JSX.Element { return <App/>; }\n",
            {"App", "Page"}),
    "go": ("package main\n\ntype Server struct{}\n\nfunc (s *Server) Start() {}\n\nfunc main() {}\n",
           {"Server", "Start", "main"}),
    "rust": ("struct Point { x: i32 }\nenum Shape { Dot }\ntrait Area {}\n"
             "fn area(p: &Point) -> i32 { p.x }\n", {"Point", "Shape", "Area", "area"}),
    "java": ("class Account {\n  int balance() { return 0; }\n}\ninterface Bank {}\n",
             {"Account", "balance", "Bank"}),
    "c": ("struct node { int v; };\nint count(struct node *n) { return 0; }\n"
          "char *name(void) { return 0; }\n#define SQUARE(x) ((x) * (x))\n",
          {"node", "count", "name", "SQUARE"}),
    "cpp": ("class Stack { void push(int v) {} };\nint Stack::size() { return 0; }\n",
            {"Stack", "push", "size"}),
    "lua": ("local M = {}\nfunction M.greet(name) end\nfunction M:close() end\nfunction helper() end\n",
            {"greet", "close", "helper"}),
    "bash": ("greet() {\n  echo hi\n}\nfunction cleanup {\n  rm -f x\n}\n", {"greet", "cleanup"}),
}


def test_every_language_has_a_sample():
    assert set(SAMPLES) == set(LANGUAGES)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_grammar_parses_without_errors_and_finds_definitions(name):
    spec = LANGUAGES[name]
    text, expected = SAMPLES[name]
    tree = parse(spec, text)
    assert not tree.root_node.has_error
    definitions = RelatedIndex().definitions(Source("file:///x", "x", spec, text, 1, tree))
    assert {d.name for d in definitions} == expected


def test_ids_and_extensions_point_at_known_languages():
    assert set(LANGUAGE_IDS.values()) <= set(LANGUAGES)
    assert set(EXTENSIONS.values()) <= set(LANGUAGES)
    for language_id in ("python", "javascript", "typescript", "typescriptreact", "go", "rust",
                        "java", "c", "cpp", "lua", "shellscript"):
        assert language_for(language_id) is not None


@pytest.mark.parametrize("language_id, path, name", [
    ("PYTHON", None, "python"),
    ("", "src/main.go", "go"),
    ("plaintext", "lib/x.HPP", "cpp"),
    ("unknown", "notes.txt", None),
    (None, None, None),
])
def test_language_for(language_id, path, name):
    spec = language_for(language_id, path)
    assert (spec.name if spec else None) == name


# ---------------------------------------------------------------------------------------------
# The document typed in: definitions kept per top-level statement (#24)

def _typed(text: str, line: int, chars: int):
    """The document after each keystroke of typing `chars` characters back from `line`, then
    after an opening bracket left unclosed, and after it is deleted again."""
    start = sum(len(x) + 1 for x in text.split("\n")[:line])
    typed, base = text[start:start + chars], text[:start] + text[start + chars:]
    for n in range(1, len(typed) + 1):
        yield base[:start] + typed[:n] + base[start:]
    yield base[:start] + typed + "(" + base[start:]
    yield text


@pytest.mark.parametrize("module", ["jinja2/lexer.py", "jinja2/runtime.py"])
@pytest.mark.parametrize("split", [related.SPLIT_BYTES, 200])
def test_the_definitions_of_a_document_typed_in_are_a_whole_querys(module, split, monkeypatch):
    """Only the statement a keystroke falls in is queried again (the part of it, when it is
    long); what is found equals a query over the whole tree on every keystroke, also when an
    unclosed bracket changes the tree."""
    monkeypatch.setattr(related, "SPLIT_BYTES", split)
    path = Path(jinja2.__file__).parent.parent / module
    text = path.read_text(encoding="utf-8")
    spec, index = LANGUAGES["python"], RelatedIndex()
    parser = spec.parser()
    tree = parser.parse(tree_source(text))
    for version, document in enumerate(_typed(text, len(text.split("\n")) // 2, 60), start=1):
        tree = parser.parse(tree_source(document))
        found = index.definitions(Source("file:///m.py", "m.py", spec, document, version, tree))
        assert found == query_definitions(spec.definition_query, tree.root_node), version
        assert found


@pytest.mark.parametrize("name", sorted(SAMPLES))
@pytest.mark.parametrize("split", [related.SPLIT_BYTES, 16])
def test_definitions_after_an_edit_in_each_language_are_a_whole_querys(name, split, monkeypatch):
    monkeypatch.setattr(related, "SPLIT_BYTES", split)
    spec, index = LANGUAGES[name], RelatedIndex()
    text = SAMPLES[name][0] * 3
    for version, document in enumerate([text, text.replace("\n", "\n\n", 2), "x" + text, text[5:]], start=1):
        tree = parse(spec, document)
        found = index.definitions(Source("file:///x", "x", spec, document, version, tree))
        assert found == query_definitions(spec.definition_query, tree.root_node)
