"""The languages Latent understands: tree-sitter grammars and the few facts the pipeline needs.

Each language is one `LanguageSpec` row of data: where its grammar lives (one wheel per
grammar), the line comment used for the file-path header, which tokens open a body at the end
of a line (for *block* mode), and a query that finds definitions (for related snippets).
A document whose language is not here completes as plain text (`language_for` returns None).

    spec = language_for("typescriptreact")        # or language_for("", "src/app.tsx")
    tree = spec.parser().parse(source_bytes)
"""
from __future__ import annotations

import functools
import importlib
import posixpath
from dataclasses import dataclass, field

import tree_sitter

# ---------------------------------------------------------------------------------------------
# Definition queries (tree-sitter tags, trimmed to definitions): each pattern captures the
# whole definition as @definition and its name as @name.

def _named(*pairs: tuple[str, str]) -> str:
    """A definitions query: each (node type, name node type) captures `@definition` / `@name`."""
    return "".join(f"({node} name: ({kind}) @name) @definition\n" for node, kind in pairs)


_PYTHON_DEFINITIONS = """
(function_definition name: (identifier) @name) @definition
(class_definition name: (identifier) @name) @definition
(module (expression_statement (assignment left: (identifier) @name)) @definition)
"""

_ECMASCRIPT_DEFINITIONS = """
(function_declaration name: (identifier) @name) @definition
(generator_function_declaration name: (identifier) @name) @definition
(method_definition name: (property_identifier) @name) @definition
(lexical_declaration
  (variable_declarator name: (identifier) @name
                      value: [(arrow_function) (function_expression)])) @definition
"""

_JAVASCRIPT_DEFINITIONS = _ECMASCRIPT_DEFINITIONS + """
(class_declaration name: (identifier) @name) @definition
"""

_TYPESCRIPT_DEFINITIONS = _ECMASCRIPT_DEFINITIONS + """
(class_declaration name: (type_identifier) @name) @definition
(abstract_class_declaration name: (type_identifier) @name) @definition
(interface_declaration name: (type_identifier) @name) @definition
(type_alias_declaration name: (type_identifier) @name) @definition
(enum_declaration name: (identifier) @name) @definition
"""

_GO_DEFINITIONS = """
(function_declaration name: (identifier) @name) @definition
(method_declaration name: (field_identifier) @name) @definition
(type_declaration (type_spec name: (type_identifier) @name)) @definition
"""

_RUST_DEFINITIONS = _named(
    ("function_item", "identifier"), ("struct_item", "type_identifier"), ("enum_item", "type_identifier"),
    ("trait_item", "type_identifier"), ("type_item", "type_identifier"), ("const_item", "identifier"),
    ("macro_definition", "identifier"))

_JAVA_DEFINITIONS = _named(
    ("class_declaration", "identifier"), ("interface_declaration", "identifier"),
    ("enum_declaration", "identifier"), ("record_declaration", "identifier"), ("method_declaration", "identifier"))

_C_DEFINITIONS = """
(function_definition declarator: (function_declarator declarator: (identifier) @name)) @definition
(function_definition
  declarator: (pointer_declarator declarator: (function_declarator declarator: (identifier) @name))) @definition
(declaration declarator: (function_declarator declarator: (identifier) @name)) @definition
(struct_specifier name: (type_identifier) @name body: (_)) @definition
(enum_specifier name: (type_identifier) @name body: (_)) @definition
(type_definition declarator: (type_identifier) @name) @definition
(preproc_function_def name: (identifier) @name) @definition
"""

_CPP_DEFINITIONS = _C_DEFINITIONS + """
(function_definition
  declarator: (function_declarator declarator: (qualified_identifier name: (identifier) @name))) @definition
(function_definition declarator: (function_declarator declarator: (field_identifier) @name)) @definition
(class_specifier name: (type_identifier) @name body: (_)) @definition
"""

_LUA_DEFINITIONS = """
(function_declaration name: (identifier) @name) @definition
(function_declaration name: (dot_index_expression field: (identifier) @name)) @definition
(function_declaration name: (method_index_expression method: (identifier) @name)) @definition
"""

_BASH_DEFINITIONS = """
(function_definition name: (word) @name) @definition
"""

# ---------------------------------------------------------------------------------------------
# Block openers: a token that, last on its line, opens a body. The value is the set of parent
# node types it must have (None: any parent). Under an ERROR parent (code being written) a
# language may require the line to start with one of its `header_keywords`.

_BRACE = {"{": None}
_PYTHON_COMPOUND = frozenset({
    "function_definition", "class_definition", "if_statement", "elif_clause", "else_clause",
    "for_statement", "while_statement", "with_statement", "try_statement", "except_clause",
    "except_group_clause", "finally_clause", "match_statement", "case_clause", "ERROR",
})
_PYTHON_HEADERS = frozenset({
    "def", "class", "if", "elif", "else", "for", "while", "with", "try", "except", "finally",
    "async", "match", "case",
})


@dataclass(frozen=True, eq=False)
class LanguageSpec:
    name: str
    module: str                   # the grammar wheel's module …
    function: str                 # … and the function returning its language pointer
    comment: str                  # line comment opening the path header
    block_openers: dict = field(default_factory=dict)  # token type -> parent types or None
    header_keywords: frozenset = frozenset()
    definitions: str = ""         # query with @definition / @name captures

    @property
    def language(self) -> tree_sitter.Language:
        return _load_language(self.module, self.function)

    def parser(self) -> tree_sitter.Parser:
        """A new parser (parsers are not shared between threads; creating one is cheap)."""
        return tree_sitter.Parser(self.language)

    @property
    def definition_query(self) -> tree_sitter.Query | None:
        return _compile_query(self.module, self.function, self.definitions) if self.definitions else None


@functools.cache
def _load_language(module: str, function: str) -> tree_sitter.Language:
    return tree_sitter.Language(getattr(importlib.import_module(module), function)())


@functools.cache
def _compile_query(module: str, function: str, source: str) -> tree_sitter.Query:
    return tree_sitter.Query(_load_language(module, function), source)


def _spec(name, module, function, comment, openers, definitions, header_keywords=frozenset()):
    return LanguageSpec(name, module, function, comment, openers, header_keywords, definitions)


LANGUAGES: dict[str, LanguageSpec] = {spec.name: spec for spec in (
    _spec("python", "tree_sitter_python", "language", "#",
          {":": _PYTHON_COMPOUND}, _PYTHON_DEFINITIONS, _PYTHON_HEADERS),
    _spec("javascript", "tree_sitter_javascript", "language", "//",
          {**_BRACE, "=>": None}, _JAVASCRIPT_DEFINITIONS),
    _spec("typescript", "tree_sitter_typescript", "language_typescript", "//",
          {**_BRACE, "=>": None}, _TYPESCRIPT_DEFINITIONS),
    _spec("tsx", "tree_sitter_typescript", "language_tsx", "//",
          {**_BRACE, "=>": None}, _TYPESCRIPT_DEFINITIONS),
    _spec("go", "tree_sitter_go", "language", "//", _BRACE, _GO_DEFINITIONS),
    _spec("rust", "tree_sitter_rust", "language", "//", _BRACE, _RUST_DEFINITIONS),
    _spec("java", "tree_sitter_java", "language", "//", _BRACE, _JAVA_DEFINITIONS),
    _spec("c", "tree_sitter_c", "language", "//", _BRACE, _C_DEFINITIONS),
    _spec("cpp", "tree_sitter_cpp", "language", "//", _BRACE, _CPP_DEFINITIONS),
    _spec("lua", "tree_sitter_lua", "language", "--",
          {"then": None, "do": None, "else": None, "repeat": None,
           ")": frozenset({"parameters"})}, _LUA_DEFINITIONS),
    _spec("bash", "tree_sitter_bash", "language", "#",
          {"then": None, "do": None, "else": None, "{": None}, _BASH_DEFINITIONS),
)}

# LSP language identifiers (VS Code's and Neovim's spellings) -> language name.
LANGUAGE_IDS: dict[str, str] = {
    "python": "python",
    "javascript": "javascript", "javascriptreact": "javascript", "jsx": "javascript",
    "typescript": "typescript", "typescriptreact": "tsx", "tsx": "tsx",
    "go": "go",
    "rust": "rust",
    "java": "java",
    "c": "c",
    "cpp": "cpp", "c++": "cpp", "cuda-cpp": "cpp",
    "lua": "lua",
    "shellscript": "bash", "bash": "bash", "sh": "bash", "zsh": "bash",
}

EXTENSIONS: dict[str, str] = {
    ".py": "python", ".pyi": "python", ".pyw": "python",
    ".js": "javascript", ".mjs": "javascript", ".cjs": "javascript", ".jsx": "javascript",
    ".ts": "typescript", ".mts": "typescript", ".cts": "typescript",
    ".tsx": "tsx",
    ".go": "go",
    ".rs": "rust",
    ".java": "java",
    ".c": "c", ".h": "c",
    ".cc": "cpp", ".cpp": "cpp", ".cxx": "cpp", ".c++": "cpp",
    ".hh": "cpp", ".hpp": "cpp", ".hxx": "cpp", ".h++": "cpp", ".cu": "cpp",
    ".lua": "lua",
    ".sh": "bash", ".bash": "bash", ".zsh": "bash",
}


def language_for(language_id: str | None, path: str | None = None) -> LanguageSpec | None:
    """The language of a document: by LSP language id first, then by file extension.

    `path` may be a relative path or a URI. None means plain text.
    """
    name = LANGUAGE_IDS.get((language_id or "").lower())
    if name is None and path:
        name = EXTENSIONS.get(posixpath.splitext(path)[1].lower())
    return LANGUAGES.get(name) if name else None
