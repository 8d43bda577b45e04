"""`make demo`: complete a sample file with the bundled model, then type one more character.

Prints the suggestion, its latency and how the engine got there; then the second request,
one keystroke later, with the tokens it reused from the latent cache.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from completion.types import REASONS

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


def main(argv: list[str] | None = None) -> int:
    import argparse

    from completion.service import CompletionService
    from completion.types import Position
    from model.engine import Engine
    from model.loader import BUNDLED_DIR
    from model.loader import ModelLoadError

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=BUNDLED_DIR, help="model folder (default: the bundled model)")
    folder = parser.parse_args(argv).model.resolve()
    t0 = time.perf_counter()
    try:
        engine = Engine.load(None if folder == BUNDLED_DIR else folder)
    except ModelLoadError as e:
        print(f"demo: {e}", file=sys.stderr)
        return 2
    load_ms = (time.perf_counter() - t0) * 1e3
    stats = engine.stats()
    print(f"model: {folder.relative_to(Path.cwd()) if folder.is_relative_to(Path.cwd()) else folder} "
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
        print(f"\ntyping-through: typing {ahead!r}, the suggestion's own next character, is answered by "
              f"{third.source} in {sum(third.timings_ms.values()):.1f} ms with no model call — the ghost text "
              f"just gets shorter.")
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


MODES = {"line": "complete the rest of the line", "block": "write the body of the block just opened",
         "none": "offer nothing here"}
SOURCES = {"model": "the model ran", "typing-through": "no model call: the text typed so far starts the last "
           "suggestion, so its rest is shown at once", "cache": "no model call: the same request was answered "
           "before", "skipped": "no model call", "cancelled": "cancelled"}


def _show(title: str, before: str, result) -> None:
    """A few lines of the file with the ghost text in place, then one plain sentence each for
    what the pipeline decided to do, where the answer came from and what the engine computed."""
    print(f"\n== {title} ==")
    lines = before.split("\n")
    for line in lines[-4:-1]:
        print(f"    {line}")
    ghost = result.suggestions[0].text if result.suggestions else ""
    shown = ghost.replace("\n", "\n    ")
    print(f"    {lines[-1]}\033[2m{shown}\033[0m" if sys.stdout.isatty() else f"    {lines[-1]}«{shown}»")
    for line in SUFFIX.split("\n")[1:3]:
        print(f"    {line}")
    s = result.engine_stats or {}
    total = result.timings_ms.get("total", sum(result.timings_ms.values()))
    print(f"mode: {result.mode} — the pipeline chose to {MODES.get(result.mode, result.mode)}.")
    print(f"answer: {total:.0f} ms — {SOURCES.get(result.source, result.source)}."
          + ("" if ghost else f" No suggestion: {REASONS.get(result.reason, result.reason)}"))
    if result.source == "model":
        print(f"prefilled: {s.get('prefilled_tokens', 0)} of the prompt's {s.get('prompt_tokens', 0)} tokens were "
              f"computed; the other {s.get('reused_tokens', 0)} came from the latent cache; "
              f"{s.get('generated_tokens', 0)} tokens generated.")


if __name__ == "__main__":
    raise SystemExit(main())
