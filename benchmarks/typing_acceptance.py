"""Typing acceptance: would a programmer keep the suggestion at the start of a line?

    python benchmarks/typing_acceptance.py                      # the bundled model, 500 line starts
    python benchmarks/typing_acceptance.py --model DIR --layout psm --count 1000

Code the model never saw: functions of the packages held out of training (click, jinja2, attrs,
networkx, pygments, trio, pyparsing, docutils, markdown-it-py), as installed in this Python.
A line start is a line inside a function body, with at least 8 characters of code; the
document is the whole file with that line's code removed and the cursor after its indentation
— someone about to type the line, the rest of the file in place (with `--first-column`, the
emptied line blank and the cursor at its first column). The whole completion pipeline
answers (`completion.CompletionService`, as the language server would), and its first line is
compared with the true line:

- accepted: the first line equals the true line (surrounding blanks ignored);
- kept: the share of the true line's characters a user would keep — the longest common prefix
  of suggestion and truth over the truth's length, averaged (0 for no suggestion);
- empty: no suggestion at all.

Line starts are drawn with a fixed seed, the same ones for every model. One row per model and
layout goes to the "Typing acceptance" section of docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import ast
import importlib
import random
import shlex
import statistics
import sys
import time
from pathlib import Path

from model.params import RuntimeConfig
from report import write_row

REPO = Path(__file__).resolve().parent.parent
BUNDLED = REPO / "model" / "bundled"
DOCS = REPO / "docs" / "benchmarks.md"
HELD_OUT = ("click", "jinja2", "attr", "networkx", "pygments", "trio", "pyparsing", "docutils", "markdown_it")
SECTION = "## Typing acceptance (held-out packages)"
HEADER = f"""{SECTION}

At line starts inside functions of packages held out of training (`benchmarks/typing_acceptance.py`,
its docstring says how they are drawn): does the pipeline's first line equal the true line, and
what share of the true line's characters would a user keep (longest common prefix). One row per
model and layout; each run replaces its own row.

| model | layout | line starts | accepted | kept | empty | p50 ms | packages | date | command |
|---|---|---|---|---|---|---|---|---|---|
"""
ROW_KEY = (0, 1, 2)


def line_starts(count: int, seed: int, packages: tuple[str, ...] = HELD_OUT, only=None) -> list[dict]:
    """`count` line starts drawn from the held-out packages' function bodies (of the files
    whose path in their package `only(path)` accepts, when given)."""
    candidates = []
    for package in packages:
        root = package_root(package)
        if root is None:
            continue
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            if only is None or only(rel):
                candidates += _in_file(path, f"{package}/{rel}")
    random.Random(seed).shuffle(candidates)
    return candidates[:count]


def package_root(package: str) -> Path | None:
    """The folder of an installed package, or None."""
    try:
        module = importlib.import_module(package)
    except ImportError:
        return None
    return Path(module.__file__).parent if module.__file__ else None


def _in_file(path: Path, name: str) -> list[dict]:
    try:
        text = path.read_text(encoding="utf-8")
        tree = ast.parse(text)
    except (UnicodeDecodeError, SyntaxError, ValueError):
        return []
    lines = text.split("\n")
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for statement in node.body:
            row = statement.lineno - 1
            line = lines[row]
            code = line.strip()
            if len(code) < 8 or code.startswith(("#", '"', "'")) or statement.end_lineno != statement.lineno:
                continue
            indent = line[: len(line) - len(line.lstrip())]
            document = "\n".join(lines[:row] + [indent] + lines[row + 1:])
            out.append({"file": name, "line": row, "indent": indent, "truth": code, "text": document})
    return out


def common_prefix(a: str, b: str) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def at_first_column(start: dict) -> dict:
    """The same line start with the emptied line blank and the cursor at its first column: a
    trimmed blank line the user has moved to, or a line opened without auto-indent."""
    lines = start["text"].split("\n")
    lines[start["line"]] = ""
    return {**start, "indent": "", "text": "\n".join(lines)}


def run(starts: list[dict], model: Path, layout: str, threads: int, healing: bool = True) -> dict:
    from completion import CompletionConfig, CompletionService
    from completion.types import Position
    from model.engine import Engine

    engine = Engine.load(str(model), RuntimeConfig(threads=threads))
    engine.forward.wait()   # one decode step for the whole run (compiled where it can be): near-ties stay put
    service = CompletionService(engine, CompletionConfig(fim_layout=layout, token_healing=healing))
    accepted, kept, empty, latencies = 0, [], 0, []
    for i, start in enumerate(starts):
        uri = f"file:///heldout/{start['file']}"
        service.workspace.open(uri, "python", start["text"], 1, path=start["file"])
        t0 = time.perf_counter()
        result = service.complete(service.workspace.snapshot(uri), Position(start["line"], len(start["indent"])))
        latencies.append((time.perf_counter() - t0) * 1e3)
        service.workspace.close(uri)
        service.forget(uri)
        first = result.suggestions[0].text.split("\n", 1)[0].strip() if result.suggestions else ""
        empty += not first
        accepted += bool(first) and first == start["truth"]
        kept.append(common_prefix(first, start["truth"]) / len(start["truth"]))
        if (i + 1) % 100 == 0:
            print(f"  {i + 1}/{len(starts)}", file=sys.stderr)
    n = len(starts)
    return {"n": n, "accepted": 100.0 * accepted / n, "kept": 100.0 * statistics.fmean(kept),
            "empty": 100.0 * empty / n, "p50_ms": statistics.median(latencies)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="typing_acceptance", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=BUNDLED, help="model folder (default: the bundled model)")
    p.add_argument("--layout", choices=("auto", "psm", "spm"), default="auto", help="FIM layout (setting fim_layout)")
    p.add_argument("--count", type=int, default=500, help="line starts to try")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-healing", dest="healing", action="store_false", help="setting token_healing = false")
    p.add_argument("--first-column", action="store_true",
                   help="the emptied line blank and the cursor at its first column, not after its indentation")
    p.add_argument("--packages", nargs="+", default=HELD_OUT,
                   help="draw line starts from these installed packages (default: the held-out ones)")
    p.add_argument("--no-docs", action="store_true", help="do not write docs/benchmarks.md")
    args = p.parse_args(argv)
    starts = line_starts(args.count, args.seed, tuple(args.packages))
    if args.first_column:
        starts = [at_first_column(start) for start in starts]
    if len(starts) < args.count:
        print(f"typing_acceptance: only {len(starts)} line starts found", file=sys.stderr)
    figures = run(starts, args.model, args.layout, args.threads, args.healing)
    print(f"{figures['n']} line starts: accepted {figures['accepted']:.1f} %, kept {figures['kept']:.1f} %, "
          f"empty {figures['empty']:.1f} %, p50 {figures['p50_ms']:.0f} ms")
    if not args.no_docs:
        model = "bundled" if args.model.resolve() == BUNDLED.resolve() else args.model.name
        packages = ", ".join(sorted({s["file"].split("/")[0] for s in starts}))
        command = "python benchmarks/typing_acceptance.py " + shlex.join(argv if argv is not None else sys.argv[1:])
        cursor = ", first column" if args.first_column else ""
        write_row(DOCS, HEADER, [model, args.layout + cursor, str(figures["n"]), f"{figures['accepted']:.1f} %",
                                 f"{figures['kept']:.1f} %", f"{figures['empty']:.1f} %",
                                 f"{figures['p50_ms']:.0f}", packages, time.strftime("%Y-%m-%d"),
                                 f"`{command.strip()}`"], ROW_KEY)
    return 0


if __name__ == "__main__":
    sys.exit(main())
