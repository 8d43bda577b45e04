"""int4 on the CPU: accuracy against float32 and int8, and the kernel's speed against fbgemm's int8.

    python benchmarks/int4_kernels.py [--write docs/benchmarks.md]

Accuracy: the bundled model's logits over 1,400 tokens of real code (this repository's own
Python), float32 against quantize = "int8" and quantize = "int4" (model/int4.py: Q4_0's blocks
and rounding, the head in int8): the relative error of the logits and how often the greedy pick
is float32's. Speed: one product of Lite's shapes (an expert's gate-up and down, the attention's
query) at one row (a decode step) and at 16 and 128 rows (prefill), int4 through model/int4.py's
kernel against fbgemm's int8 GEMM (what quantize = "int8" runs) and float32's, the three
interleaved, medians of 5. Run it with the training paused: two busy cores skew even ratios.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import warnings
from pathlib import Path

import torch

from model.engine import Engine
from model.int4 import best_path, q4_matmul, quantize_q4
from model.params import RuntimeConfig
from model.quant import quantize_rows
from model.torch_private import fbgemm_linear, fbgemm_prepack
from report import publish, seconds_per_call

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## int4 on the CPU (benchmarks/int4_kernels.py)"
SHAPES = [(2816, 2048), (2048, 1408), (3072, 2048)]   # Lite's expert w13 and w2, q_proj
ROWS = (1, 16, 128)


def accuracy() -> dict:
    text = "".join((ROOT / path).read_text()[:3000] for path in ("lsp_server/worker.py", "completion/service.py"))
    fp32 = Engine.load(None, RuntimeConfig(compile=False, threads=1))
    ids = fp32.tokenizer.encode(text)[:1400]
    reference = fp32.logits(ids)
    out = {"tokens": len(ids), "float32_bytes": fp32.weight_bytes}
    for quantize in ("int8", "int4"):
        engine = Engine.load(None, RuntimeConfig(compile=False, threads=1, quantize=quantize))
        logits = engine.logits(ids)
        out[quantize] = {"error": ((logits - reference).norm() / reference.norm()).item(),
                         "agree": (logits.argmax(-1) == reference.argmax(-1)).float().mean().item(),
                         "bytes": engine.weight_bytes}
    return out


def speed(threads: int) -> list[dict]:
    torch.set_num_threads(threads)
    rows = []
    for n, k in SHAPES:
        w = torch.randn(n, k) * k ** -0.5
        packed, scales = quantize_q4(w)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            int8 = fbgemm_prepack(*quantize_rows(w))
        for m in ROWS:
            x = torch.randn(m, k)
            reps = {1: 200, 16: 40, 128: 8}[m]
            times: dict[str, list[float]] = {"int4": [], "int8": [], "float32": []}
            for _ in range(5):
                times["int4"].append(seconds_per_call(lambda: q4_matmul(x, packed, scales, n), reps))
                times["int8"].append(seconds_per_call(lambda: fbgemm_linear(x, int8, reduce_range=False), reps))
                times["float32"].append(seconds_per_call(lambda: x @ w.t(), reps))
            rows.append({"shape": (n, k), "rows": m, **{key: statistics.median(v) for key, v in times.items()}})
    return rows


def report(acc: dict, runs: dict[int, list[dict]]) -> str:
    lines = [
        SECTION, "",
        f"`python benchmarks/int4_kernels.py` — {time.strftime('%Y-%m-%d')}, {platform.machine()} with "
        f"{os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.1f}), kernel path `{best_path()}`.", "",
        f"Accuracy, the bundled model on {acc['tokens']} tokens of real code:", "",
        "| weights | bytes | logits' relative error | greedy pick as float32's |",
        "|---|---:|---:|---:|",
        f"| float32 | {acc['float32_bytes'] / 1e6:.1f} MB | – | – |",
    ]
    for quantize in ("int8", "int4"):
        a = acc[quantize]
        lines.append(f"| {quantize} | {a['bytes'] / 1e6:.1f} MB | {a['error']:.1%} | {a['agree']:.1%} |")
    lines += ["", "(The bundled model's float32 embedding is most of its bytes; Lite's weights are 98 % "
                  "linear layers and experts.)", "",
              "Speed, one product, medians of 5 (ms; ratio: int4's time over the other's, below 1 faster):", "",
              "| threads | shape (out × in) | rows | int4 | int8 (fbgemm) | float32 | int4 / int8 | int4 / float32 |",
              "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for threads, rows in runs.items():
        for r in rows:
            lines.append(f"| {threads} | {r['shape'][0]} × {r['shape'][1]} | {r['rows']} | {r['int4'] * 1e3:.3f} | "
                         f"{r['int8'] * 1e3:.3f} | {r['float32'] * 1e3:.3f} | {r['int4'] / r['int8']:.2f} | "
                         f"{r['int4'] / r['float32']:.2f} |")
    lines += ["", "int4 reads 4.5 bits a weight against int8's 8: decode-shaped products are where it pays; "
                  "prefill multiplies 8 output rows × 4 activation rows at a time with per-block scales, still "
                  "a few times fbgemm's int8 GEMM.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/int4_kernels.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", type=Path, default=None, help="replace this section in a Markdown file")
    args = parser.parse_args(argv)
    acc = accuracy()
    runs = {threads: speed(threads) for threads in (1, 2)}
    publish(report(acc, runs), args.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
