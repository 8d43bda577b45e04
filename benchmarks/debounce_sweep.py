"""How long the server should wait after a keystroke: `python benchmarks/debounce_sweep.py [--write docs/benchmarks.md]`.

The LSP typing replay (lsp_replay.py) at a person's pace (`--pace human`), once per debounce_ms
value, in rounds that alternate the order (the cores are shared: neighbours in time see the same
load). Per value: the model runs per keystroke (work a debounce saves: superseded keystrokes
never reach the model) and, at pauses where a person looks for ghost text, how many showed it
and how long after the key. The default should be where model runs stop falling fast and
before the wait at pauses grows by more than the debounce itself.
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path

import lsp_replay
from lsp_server.settings import ServerOptions
from report import publish

SECTION = "## Debounce: how long to wait after a keystroke (benchmarks/debounce_sweep.py)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/debounce_sweep.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--values", default="0,25,50,100,150", help="debounce_ms values (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=2, help="passes over the values, alternating order")
    parser.add_argument("--chars", type=int, default=300, help="characters typed per run (default: %(default)s)")
    parser.add_argument("--file", type=Path, default=lsp_replay.DEFAULT_FILE)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--write", type=Path, default=None, help="replace this section in a Markdown file")
    args = parser.parse_args(argv)
    values = [int(v) for v in args.values.split(",")]
    figures: dict[int, list[dict]] = {v: [] for v in values}
    for round_ in range(args.rounds):
        for value in values if round_ % 2 == 0 else values[::-1]:
            run_args = lsp_replay.make_parser().parse_args([
                "--file", str(args.file), "--chars", str(args.chars), "--threads", str(args.threads),
                "--pace", "human", "--seed", str(round_), "--debounce-ms", str(value)])
            figures[value].append(lsp_replay.paced_figures(asyncio.run(lsp_replay.replay(run_args))))
            print(f"debounce {value} ms, round {round_ + 1}: {figures[value][-1]}", flush=True)

    def mean(value: int, key: str) -> float:
        return statistics.fmean(f[key] for f in figures[value])

    lines = [SECTION, "",
             f"`python benchmarks/debounce_sweep.py --values {args.values} --rounds {args.rounds} --chars {args.chars}` "
             f"— {time.strftime('%Y-%m-%d')}; each run types `{lsp_replay._shown(args.file)}` back at a person's pace "
             f"(log-normal inter-key intervals, median 180 ms, a 0.4–1.5 s pause one key in eight; seed = round), "
             "bundled model, exact reuse, PSM; means over the rounds.", "",
             "| debounce_ms | model runs per keystroke | superseded requests | pauses with ghost text | "
             "ghost text at pauses, p50 ms | p95 ms |",
             "|---:|---:|---:|---:|---:|---:|"]
    for value in values:
        lines.append(f"| {value} | {mean(value, 'runs_per_key'):.2f} | {mean(value, 'superseded'):.0f} | "
                     f"{mean(value, 'shown_at_pauses'):.0f} of {mean(value, 'pauses'):.0f} | "
                     f"{mean(value, 'pause_p50'):.0f} | {mean(value, 'pause_p95'):.0f} |")
    base = values[0]
    deltas = ", ".join(f"{v} ms: {mean(v, 'pause_p50') - mean(base, 'pause_p50'):+.0f} ms waited, "
                       f"{mean(v, 'runs_per_key') / mean(base, 'runs_per_key') - 1:+.0%} model runs" for v in values[1:])
    lines += ["", f"Against {base} ms — {deltas}. The server's default, debounce_ms = "
              f"{ServerOptions.debounce_ms}, follows from this table: a wait saves model work only once it "
              "approaches the time between keys, and every millisecond of it is added to the wait where a person "
              "looks for ghost text (fewer keystrokes then have an earlier suggestion to type through, too). "
              "A model much slower than the time between keys is where a debounce pays."]
    publish("\n".join(lines) + "\n", args.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
