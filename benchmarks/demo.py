"""`make demo`: complete a sample file with the bundled model, then type one more character.

Prints the suggestion, its latency and how the engine got there; then the second request,
one keystroke later, with the tokens it reused from the latent cache.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

SAMPLE = '''import json
from pathlib import Path


def load_settings(path):
    """Read a JSON settings file; a missing file gives the defaults."""
    defaults = {"theme": "dark", "font_size": 12}
    path = Path(path)
    if not path.exists():
        return defaults
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    settings = dict(defaults)
    for key, value in data.items():
        '''

SUFFIX = '''
    return settings


def save_settings(path, settings):
    Path(path).write_text(json.dumps(settings, indent=2), encoding="utf-8")
'''


def main() -> int:
    from completion.service import CompletionService
    from completion.types import Position
    from model.engine import Engine
    from model.loader import BUNDLED_DIR
    from model.loader import ModelLoadError

    t0 = time.perf_counter()
    try:
        engine = Engine.load()
    except ModelLoadError as e:
        print(f"demo: {e}", file=sys.stderr)
        return 2
    load_ms = (time.perf_counter() - t0) * 1e3
    stats = engine.stats()
    print(f"model: {BUNDLED_DIR.relative_to(Path.cwd()) if BUNDLED_DIR.is_relative_to(Path.cwd()) else BUNDLED_DIR} "
          f"({stats['parameters'] / 1e6:.1f}M parameters, {stats['model_type']}, FIM {stats['fim_format']}), "
          f"loaded in {load_ms:.0f} ms")

    service = CompletionService(engine)
    uri = "file:///demo/settings.py"
    text = SAMPLE + SUFFIX
    service.workspace.open(uri, "python", text, 1, path="demo/settings.py")
    cursor = _end_of(SAMPLE)

    result = _complete(service, uri, cursor)
    _show("first request", SAMPLE, result)

    # one more keystroke: a character the suggestion did not start with, so the model runs again
    suggestion = result.suggestions[0].text if result.suggestions else ""
    typed = "i" if not suggestion.startswith("i") else "v"
    _type(service, uri, cursor, typed)
    second = _complete(service, uri, Position(cursor.line, cursor.character + 1))
    _show(f"after typing {typed!r}", SAMPLE + typed, second)

    if second.suggestions and len(second.suggestions[0].text) > 1:
        ahead = second.suggestions[0].text[0]
        _type(service, uri, Position(cursor.line, cursor.character + 1), ahead)
        third = _complete(service, uri, Position(cursor.line, cursor.character + 2))
        print(f"\ntyping {ahead!r}, the suggestion's own next character: answered by {third.source} "
              f"in {sum(third.timings_ms.values()):.1f} ms with no model call")
    return 0


def _end_of(text: str):
    from completion.types import Position

    lines = text.split("\n")
    return Position(len(lines) - 1, len(lines[-1]))


def _type(service, uri: str, at, char: str) -> None:
    from completion.types import Range, TextChange

    doc = service.workspace.get(uri)
    service.workspace.change(uri, doc.version + 1, [TextChange(char, Range(at, at))])


def _complete(service, uri, position):
    t = time.perf_counter()
    result = service.complete(service.workspace.snapshot(uri), position)
    result.timings_ms.setdefault("total", (time.perf_counter() - t) * 1e3)
    return result


def _show(title: str, before: str, result) -> None:
    print(f"\n== {title} ==")
    last_line = before.split("\n")[-1]
    if result.suggestions:
        text = result.suggestions[0].text
        print(f"{last_line}\033[2m{text}\033[0m" if sys.stdout.isatty() else f"{last_line}«{text}»")
    else:
        print(f"(no suggestion; mode {result.mode}, source {result.source})")
    s = result.engine_stats or {}
    total = result.timings_ms.get("total", sum(result.timings_ms.values()))
    print(f"latency {total:.0f} ms (mode {result.mode}, answered by {result.source}); "
          f"prompt {s.get('prompt_tokens', 0)} tokens: {s.get('reused_tokens', 0)} reused from the latent cache, "
          f"{s.get('prefilled_tokens', 0)} prefilled; {s.get('generated_tokens', 0)} generated")


if __name__ == "__main__":
    raise SystemExit(main())
