"""What the syntax check of a suggestion costs: `python benchmarks/syntax_check.py [--write docs/benchmarks.md]`.

Before a suggestion is shown, `completion.postprocess.adds_errors` asks whether putting it into the
document makes the document's syntax worse. It parses the document with the suggestion in it
*incrementally*: the cursor's tree is copied, told the edit (`tree.edit`) and handed to the parser
as the old tree, so tree-sitter re-reads only what the edit touched (and what its error recovery
around the cursor must) and reuses every other subtree.

This benchmark replays that check where it happens when someone types: in held-out files (packages
kept out of the training corpus), at random lines inside function bodies, the line is cut after a
random number of its characters (the document as the author had it mid-line, parsed as the server
parses it) and the rest of the line is the suggestion. Interleaved at each position it times the
check as the server does it, and what the same check would cost parsing the edited document from
scratch. The two give the same trees (tree-sitter's incremental parse is exact), so only the time
differs.
"""
from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

from report import publish
from typing_acceptance import package_root

from completion.document import parse, tree_source
from completion.languages import language_for
from completion.postprocess import adds_errors

SECTION = "## Syntax check of a suggestion (benchmarks/syntax_check.py)"
FILES = ("click/core.py", "jinja2/compiler.py", "networkx/classes/graph.py")   # held out of the corpus


def positions(text: str, count: int, rng: random.Random) -> list[tuple[int, int]]:
    """(cursor, end of its line) at `count` random indented code lines, the cursor somewhere in
    the line's code."""
    found, offset = [], 0
    for line in text.split("\n"):
        code = line.lstrip()
        indent = len(line) - len(code)
        if indent >= 8 and len(code) > 4 and not code.startswith(("#", '"', "'")):
            found.append((offset + indent + rng.randrange(1, len(code)), offset + len(line)))
        offset += len(line) + 1
    return rng.sample(found, min(count, len(found)))


def measure(path: Path, count: int, rng: random.Random) -> dict:
    text = path.read_text()
    language = language_for("python", str(path))
    assert language is not None
    checks, scratch, rejected = [], [], 0
    for cursor, line_end in positions(text, count, rng):
        document = text[:cursor] + text[line_end:]          # the rest of the line not typed yet
        suggestion = text[cursor:line_end]
        tree = parse(language, document)
        assert tree is not None
        start = time.perf_counter()
        rejected += adds_errors(language, tree, document, cursor, cursor, suggestion)
        checks.append(time.perf_counter() - start)
        start = time.perf_counter()
        language.parser().parse(tree_source(document[:cursor] + suggestion + document[cursor:]))
        scratch.append(time.perf_counter() - start)
    return {"checks": checks, "scratch": scratch, "rejected": rejected, "chars": len(text)}


def _ms(values: list[float], q: int) -> str:
    """The q-th percentile of `values` (seconds), in milliseconds."""
    ordered = sorted(values)
    return f"{1e3 * ordered[min(len(ordered) - 1, len(ordered) * q // 100)]:.2f}"


def section(results: dict[str, dict], count: int) -> str:
    rows = ["| file | chars | checks | check as served, p50 / p95 ms | parsing from scratch, p50 / p95 ms | "
            "scratch ÷ served (p50) | suggestions rejected |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        served, scratch = r["checks"], r["scratch"]
        ratio = statistics.median(scratch) / statistics.median(served)
        rows.append(f"| {name} | {r['chars']:,} | {len(served)} | {_ms(served, 50)} / {_ms(served, 95)} | "
                    f"{_ms(scratch, 50)} / {_ms(scratch, 95)} | {ratio:.1f}× | {r['rejected']} |")
    return "\n".join([
        SECTION, "",
        f"`python benchmarks/syntax_check.py --count {count}` — {time.strftime('%Y-%m-%d')}, "
        f"{platform.machine()} with {len(os.sched_getaffinity(0))} CPUs, Python {platform.python_version()}.", "",
        "Per held-out file, random cursors inside function bodies; the suggestion is the rest of the "
        "line as its author wrote it, so every rejection counted is a good suggestion the check "
        "would have dropped. \"As served\" is `adds_errors`: the "
        "cursor's tree edited and reparsed incrementally, and the errors compared; \"from scratch\" "
        "is one parse of the same edited document without the old tree, timed right after it.", "",
        *rows, ""])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="syntax_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=200, help="cursors per file")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--write", type=Path, help="replace this benchmark's section in this Markdown file")
    args = p.parse_args(argv)
    rng = random.Random(args.seed)
    results = {}
    for name in FILES:
        package, rest = name.split("/", 1)
        root = package_root(package)
        if root is None:
            raise SystemExit(f"syntax_check: {package} is not installed")
        results[name] = measure(root / rest, args.count, rng)
    publish(section(results, args.count), args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
