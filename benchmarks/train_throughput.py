"""Training throughput of a preset on this machine: tokens/s of full optimizer steps (forward,
backward, AdamW or Muon) on random token rows, for each configuration given, taking turns.

    python benchmarks/train_throughput.py                                  # small, the defaults
    python benchmarks/train_throughput.py --config "experts=eager" --config "experts=grouped_mm" \
        --config "compile=1" --config "procs=2 threads=1 batch=4"

A configuration is `key=value` words over: experts (eager | grouped_mm | batched_mm), compile
(0 | 1), threads, batch (rows per process), seq, optimizer (adamw | muon), procs (processes
stepping at once, each its own model: the throughput data parallelism could reach, its
gradient exchange aside), vocab (the head's width). Each configuration runs in its own processes; a step's time is the
median after warm-up, and the figure is the sum over processes. Stop other work first (pause a
background training run with SIGSTOP): these are speeds, and the machine has two cores.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULTS = {"preset": "small", "experts": "grouped_mm", "compile": "0", "threads": "2", "batch": "8",
            "seq": "512", "optimizer": "adamw", "procs": "1", "vocab": "8192", "steps": "8"}


def one(cfg: dict) -> dict:
    """Time optimizer steps in this process (a child's entry point)."""
    import torch
    import torch.nn.functional as F

    sys.path.insert(0, str(REPO))
    from model.train.optim import make_optimizers
    from model.train.presets import PRESETS, build_model, hf_config

    torch.set_num_threads(int(cfg["threads"]))
    torch.manual_seed(0)
    vocab = int(cfg["vocab"])
    model = build_model(hf_config(PRESETS[cfg["preset"]], vocab), cfg["experts"])
    opt = make_optimizers(model, cfg["optimizer"], 1e-3, 0.1, "cpu")

    def loss_fn(x, y):
        return F.cross_entropy(model(input_ids=x).logits.flatten(0, 1), y.flatten())

    step = torch.compile(loss_fn) if cfg["compile"] == "1" else loss_fn
    B, T = int(cfg["batch"]), int(cfg["seq"])
    x, y = torch.randint(5, vocab, (B, T)), torch.randint(5, vocab, (B, T))
    times = []
    for i in range(int(cfg["steps"]) + 2):
        t = time.perf_counter()
        step(x, y).backward()
        opt.step()
        opt.zero_grad()
        if i >= 2:
            times.append(time.perf_counter() - t)
    times.sort()
    return {"ms": 1000 * times[len(times) // 2], "tok_s": B * T / times[len(times) // 2]}


def run(cfg: dict) -> dict:
    procs = [subprocess.Popen([sys.executable, __file__, "--child", json.dumps(cfg)], stdout=subprocess.PIPE,
                              text=True) for _ in range(int(cfg["procs"]))]
    results = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    return {"ms": max(r["ms"] for r in results), "tok_s": sum(r["tok_s"] for r in results)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", action="append", default=[], help="key=value words (see the module docstring)")
    p.add_argument("--rounds", type=int, default=1, help="turns each configuration takes")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(one(json.loads(args.child))))
        return 0
    configs = [{**DEFAULTS, **dict(w.split("=", 1) for w in c.split())} for c in (args.config or [""])]
    best: dict[int, dict] = {}
    for _ in range(args.rounds):
        for i, cfg in enumerate(configs):
            r = run(cfg)
            if i not in best or r["tok_s"] > best[i]["tok_s"]:
                best[i] = r
    for i, cfg in enumerate(configs):
        shown = " ".join(f"{k}={v}" for k, v in cfg.items() if k != "steps")
        print(f"{shown}: {best[i]['tok_s']:,.0f} tokens/s ({best[i]['ms']:.0f} ms per step)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
