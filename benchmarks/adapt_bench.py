"""What `latent adapt` gains on code the model never saw (#23).

    python benchmarks/adapt_bench.py --packages click attr --minutes 1 5 [--count 200] [--write docs/benchmarks.md]

For each package held out of the bundled model's training (benchmarks/typing_acceptance.py's
list), its files are split 80 / 20 by a fixed hash of the path. A workspace holding the 80 %
is adapted (model/train/adapt.py, as `latent adapt` runs it, from scratch for each budget), then
the typing-acceptance benchmark runs on line starts drawn from the other 20 % only — with the
base model and with each adapted one, the same line starts. Beside it, the adaptation's own
held-out figure (bits per byte on a tenth of the 80 % it did not train on, before → after) and
the adapted model's HumanEval single-line exact match (raw, the base's layout), to see what
general ability it keeps. Run it with the background training paused: both want the CPU.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import humaneval_infill
import typing_acceptance
from model.adapted import workspace
from model.loader import BUNDLED_DIR
from model.train.adapt import MAX_EPOCHS, TRAINABLE, adapt
from report import publish

SECTION = "## Adapting to a repository: `latent adapt` on held-out packages (benchmarks/adapt_bench.py)"


def split(rel: str) -> str:
    """"test" for a fifth of the files (a fixed hash of the path), else "adapt"."""
    return "test" if int.from_bytes(hashlib.sha256(rel.encode()).digest()[:8], "big") % 5 == 0 else "adapt"


def humaneval(model: Path, layout: str) -> float:
    """HumanEval single-line exact match (raw prompts, no pipeline), as a share."""
    with tempfile.TemporaryDirectory() as tmp:
        samples = Path(tmp) / "samples.jsonl"
        humaneval_infill.main(["--model", str(model), "--layout", layout, "--threads", "2", "--no-docs",
                               "--samples", str(samples)])
        rows = [json.loads(line) for line in samples.read_text().splitlines() if line.strip()]
    return sum(bool(r.get("exact")) for r in rows) / max(1, len(rows))


def bench(args) -> list[dict]:
    layout = (json.loads((BUNDLED_DIR / "config.json").read_text()).get("fim_layouts") or ["psm"])[-1]
    rows = []
    base_he = humaneval(BUNDLED_DIR, layout) if args.humaneval else None
    for package in args.packages:
        root = typing_acceptance.package_root(package)
        if root is None:
            print(f"{package} is not installed; skipped", file=sys.stderr)
            continue
        files = [(p.relative_to(root).as_posix(), p.read_text(encoding="utf-8")) for p in sorted(root.rglob("*.py"))]
        train = [(rel, text) for rel, text in files if split(rel) == "adapt"]
        starts = typing_acceptance.line_starts(args.count, 0, (package,), only=lambda rel: split(rel) == "test")
        base = typing_acceptance.run(starts, BUNDLED_DIR, "auto", 1)
        print(f"{package}: {len(train)} files to adapt on, {len(starts)} line starts in the others; base: "
              f"accepted {base['accepted']:.1f} %, kept {base['kept']:.1f} %", file=sys.stderr)
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / package
            folder.mkdir()
            ws = workspace(folder)
            capped: dict[str, dict] = {}     # subset -> a row whose run stopped at MAX_EPOCHS before its budget
            for subset, minutes in [(t, m) for t in args.train for m in sorted(args.minutes)]:
                if subset in capped:         # a longer budget trains the same passes: the same run
                    rows.append({**capped[subset], "minutes": minutes, "same_as": capped[subset]["minutes"]})
                    continue
                ws.forget()
                t0 = time.perf_counter()
                summary = adapt(ws, train, BUNDLED_DIR, minutes, log=lambda *_: None, threads=args.threads,
                                train=subset, lr=args.lr, passes=args.passes)
                wall = time.perf_counter() - t0
                after = typing_acceptance.run(starts, ws.model_dir, "auto", 1)
                he = humaneval(ws.model_dir, layout) if args.humaneval else None
                rows.append({"package": package, "minutes": minutes, "wall_s": wall, "summary": summary,
                             "base": base, "after": after, "humaneval": he, "base_humaneval": base_he,
                             "starts": len(starts)})
                if summary["tokens_seen"] >= 0.99 * args.passes * summary["train_tokens"]:
                    capped[subset] = rows[-1]    # its passes (and their decay) ended it, not the clock
                print(f"  {subset}, {minutes:g} min: accepted {after['accepted']:.1f} %, kept {after['kept']:.1f} %, bits/byte "
                      f"{summary['bpb_before']:.3f} -> {summary['bpb_after']:.3f}", file=sys.stderr)
            ws.forget()
    return rows


def report(args, rows: list[dict]) -> str:
    command = "python benchmarks/adapt_bench.py " + shlex.join(sys.argv[1:])
    lines = [SECTION, "",
             f"`{command.strip()}` — {time.strftime('%Y-%m-%d')}, {platform.machine()} with {os.cpu_count()} CPUs, "
             f"the bundled model adapted (lr {args.lr:g}, batch 8, the last 20 % of the budget decaying), training all its "
             f"weights or a subset (model/train/adapt.py's TRAINABLE: blocks = all but the embedding and the head, "
             f"attention = the MLA projections, top = the upper half of the blocks and the head). Typing acceptance on line starts of the package's held-out fifth (base → adapted); "
             f"bits/byte on a tenth of the adapted-on files the run held out; HumanEval single-line exact match "
             f"raw (base → adapted).", "",
             "| package | trained | budget | files / tokens adapted on | bits/byte before → after | line starts | accepted | "
             "kept | empty | HumanEval single-line |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        s, b, a = r["summary"], r["base"], r["after"]
        he = (f"{r['base_humaneval']:.1%} → {r['humaneval']:.1%}" if r["humaneval"] is not None else "–")
        budget = (f"{r['minutes']:g} min (= {r['same_as']:g} min: {args.passes:g} passes first)" if "same_as" in r
                  else f"{r['minutes']:g} min ({r['wall_s'] / 60:.1f} wall)")
        lines.append(f"| {r['package']} | {s['train']} ({s['trained_parameters'] / 1e6:.1f}M) | {budget} | {s['files']} / "
                     f"{s['train_tokens']:,} | {s['bpb_before']:.3f} → {s['bpb_after']:.3f} | {r['starts']} | "
                     f"{b['accepted']:.1f} → {a['accepted']:.1f} % | {b['kept']:.1f} → {a['kept']:.1f} % | "
                     f"{b['empty']:.1f} → {a['empty']:.1f} % | {he} |")
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/adapt_bench.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--packages", nargs="+", default=["click", "attr", "jinja2"])
    p.add_argument("--minutes", nargs="+", type=float, default=[1.0, 5.0, 20.0])
    p.add_argument("--count", type=int, default=200, help="line starts per package")
    p.add_argument("--train", nargs="+", default=["all"], choices=sorted(TRAINABLE), help="which weights train")
    p.add_argument("--threads", type=int, default=2, help="threads of the adaptation")
    p.add_argument("--lr", type=float, default=5e-4, help="peak learning rate")
    p.add_argument("--passes", type=float, default=MAX_EPOCHS, help="passes over the code at most")
    p.add_argument("--no-humaneval", dest="humaneval", action="store_false")
    p.add_argument("--write", type=Path, default=None, help="replace this section in a Markdown file")
    args = p.parse_args(argv)
    os.environ.setdefault("LATENT_ADAPT_DIR", tempfile.mkdtemp(prefix="latent-adapt-bench-"))
    try:
        rows = bench(args)
    finally:
        shutil.rmtree(os.environ["LATENT_ADAPT_DIR"], ignore_errors=True)
    publish(report(args, rows), args.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
