"""Fuzz the language server through its wire: `python benchmarks/fuzz_lsp.py [--minutes 5]` (`make fuzz`).

Generated cases — malformed frames (lengths off, bad or missing headers, garbage, truncation),
bodies that are no JSON-RPC message, and requests and notifications with hostile params — are
written as raw bytes to `latent lsp` on stdin, case after case, against one server process at a
time (a fresh one every `--cases-per-server`, with the next seed). After each case the server
must answer a probe, answer every well-formed request exactly once and no notification, and
hold exactly the text that valid and invalid changes make of a document edited along the way.
The generator and these checks are tests/wire_fuzz.py's `Fuzz`, whose short run
(tests/test_lsp_wire_fuzz.py) is part of `make test`.

Prints the cases run and each kind of finding — crashes, hangs, missing and duplicate
responses, answered notifications, lost edits — which must all be zero (exit status 1
otherwise), and the first findings in full.
"""
from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))   # a script: pytest's pythonpath does not apply

from wire_fuzz import Fuzz  # noqa: E402
from wire_helpers import Wire  # noqa: E402

FINDINGS = ("crashes", "hangs", "missing responses", "duplicate responses", "answered notifications", "lost edits")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="how long to run (default 5)")
    parser.add_argument("--seed", type=int, default=1, help="the first server's seed (default 1)")
    parser.add_argument("--cases-per-server", type=int, default=500, help="cases before a fresh server (default 500)")
    args = parser.parse_args()

    totals: collections.Counter = collections.Counter()
    findings: list[str] = []
    deadline = time.monotonic() + args.minutes * 60
    seed, started = args.seed, time.monotonic()
    with tempfile.TemporaryDirectory(prefix="latent-fuzz-") as tmp:
        while time.monotonic() < deadline:
            server = Wire(Path(tmp))
            try:
                server.initialize(ready=False)
                fuzz = Fuzz(server, seed)
                while fuzz.counts["cases"] < args.cases_per_server and time.monotonic() < deadline:
                    fuzz.run()
                    if fuzz.counts["crashes"] or fuzz.counts["hangs"]:
                        break   # this server is done; the next one goes on
                totals.update(fuzz.counts)
                findings += fuzz.findings
                findings += [f"the server's own output: {line}" for line in server.malformed]
                totals["malformed output"] += len(server.malformed)
            finally:
                server.close()
            totals["servers"] += 1
            seed += 1
            print(f"{time.monotonic() - started:6.0f} s  {_line(totals)}", flush=True)
    print(f"\nseeds {args.seed}–{seed - 1}: {_line(totals)}")
    for kind in (*FINDINGS, "malformed output"):
        print(f"  {kind:24s} {totals[kind]}")
    for finding in findings[:5]:
        print(f"\n{finding[:2000]}")
    return 1 if any(totals[kind] for kind in (*FINDINGS, "malformed output")) else 0


def _line(totals: collections.Counter) -> str:
    return (f"{totals['cases']} cases ({totals['requests']} requests, {totals['notifications']} notifications, "
            f"{totals['edits']} edits, {totals['bads']} malformed) on {totals['servers']} servers; "
            f"{sum(totals[k] for k in FINDINGS)} findings")


if __name__ == "__main__":
    sys.exit(main())
