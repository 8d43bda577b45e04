"""Whether a request is completed at all, decided before any model work.

    why = language_off(snapshot, language, config, trained)   # "" or a key of types.REASONS
    why = skip_reason(snapshot, position, config)             # … and the cursor, with no engine

A document's language is off when the user disabled it (by the editor's id or the grammar's
name), or when the model declares the languages it was trained on and this is not one of
them (unless `all_languages`). The cursor's part is context.decide's: inside a word, code
after it, a body already written.
"""
from __future__ import annotations

from completion.config import CompletionConfig
from completion.context import decide
from completion.document import MAX_PARSE_CHARS, Lines, parse
from completion.languages import LanguageSpec, language_for
from completion.types import Position, Snapshot
from completion.windows import Cursor


def language_off(snapshot: Snapshot, language: LanguageSpec | None, config: CompletionConfig,
                 trained: tuple[str, ...] = ()) -> str:
    """Why the document's language gets no completion ("" when it does); `trained`: the
    languages the model declares (none: any)."""
    names = _names(snapshot, language)
    if names & set(config.disabled_languages):
        return "language-disabled"
    if trained and not names & set(trained) and not config.all_languages:
        return "language-untrained"
    return ""


def skip_reason(snapshot: Snapshot, position: Position, config: CompletionConfig,
                max_parse_chars: int = MAX_PARSE_CHARS) -> str:
    """Why `complete` would answer nothing at `position` whatever the model, or "": a disabled
    language, or a cursor where no completion goes (inside a word, code after it, a body
    already written). Needs no engine, so a one-shot client decides before loading one."""
    language = language_for(snapshot.language_id, snapshot.path or snapshot.uri)
    off = language_off(snapshot, language, config)   # no engine: only the user's own choice
    if off:
        return off
    lines = Lines(snapshot.text)
    tree = parse(language, snapshot.text, max_parse_chars) if language is not None else None
    mode, why = decide(language, tree, Cursor(lines, lines.offset(position)), config.multiline)
    return why if mode == "none" else ""


def _names(snapshot: Snapshot, language: LanguageSpec | None) -> set[str]:
    """The names a document's language goes by: the editor's id and the grammar's."""
    return {snapshot.language_id.lower(), *((language.name,) if language is not None else ())}
