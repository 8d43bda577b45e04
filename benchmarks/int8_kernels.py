"""int8 on CPUs with and without AVX-512 VNNI: accuracy against float32 and the cost of each kernel.

    python benchmarks/int8_kernels.py [--threads 1]

Accuracy: the bundled model's logits over 700 tokens of real code, float32 against int8 through
fbgemm as a VNNI CPU runs it (8-bit activations), as an AVX2 CPU ran it before (7-bit
activations, `reduce_range`) and as it runs now (rows split by sign, model/quant.py). The
products are exact integer sums in all three, so this machine computes what either CPU would.
Speed: one Lite-shaped matrix, plain rows against split ones (twice as many), interleaved.
Run it with the training paused: the figures are ratios, but two busy cores still skew them.
"""
from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import torch

import model.quant as quant
from model.engine import Engine
from model.params import RuntimeConfig
from model.torch_private import fbgemm_linear, fbgemm_prepack
from report import seconds_per_call

SHAPES = [(2816, 2048), (2048, 1408), (8192, 256)]   # Lite's expert w13 and w2; the bundled head


def _reduced(x: torch.Tensor, packed) -> torch.Tensor:
    """The AVX2 kernel of before: 7-bit activations."""
    rows = x.reshape(-1, x.shape[-1]).float()
    peak = rows.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12)
    y = fbgemm_linear((rows / peak).contiguous(), packed, reduce_range=True) * peak
    return y.reshape(*x.shape[:-1], y.shape[-1]).to(x.dtype)


def accuracy() -> None:
    text = (Path(__file__).resolve().parents[1] / "lsp_server" / "worker.py").read_text()[:3000]
    fp32 = Engine.load(None, RuntimeConfig(compile=False))
    ids = fp32.tokenizer.encode(text)[:700]
    a = fp32.logits(ids)
    native = quant.dynamic_linear
    for label, split, kernel in [("VNNI: 8-bit activations", False, native),
                                 ("AVX2 before: 7-bit activations", False, _reduced),
                                 ("AVX2 now: rows split by sign", True, native)]:
        quant.SIGN_SPLIT, quant.dynamic_linear = split, kernel
        b = Engine.load(None, RuntimeConfig(quantize="int8", compile=False)).logits(ids)
        agree = (a.argmax(-1) == b.argmax(-1)).float().mean().item()
        error = ((a - b).norm() / a.norm()).item()
        print(f"  {label:34s} greedy agreement {agree:6.1%}   logits' relative error {error:.4f}")
    quant.dynamic_linear = native


def speed() -> None:
    for out, inp in SHAPES:
        q, scale = quant.quantize_rows(torch.randn(out, inp))
        packed = fbgemm_prepack(q, scale)
        for m in (1, 4, 64, 512):
            plain, split = torch.randn(m, inp), torch.randn(2 * m, inp)
            reps = 200 if m < 64 else 10
            times = {"plain": [], "split": []}
            for _ in range(3):   # interleaved, best of 3
                for label, x in (("plain", plain), ("split", split)):
                    times[label].append(seconds_per_call(lambda x=x, w=packed: fbgemm_linear(x, w, reduce_range=True), reps))
            t_plain, t_split = min(times["plain"]), min(times["split"])
            print(f"  {out}x{inp}, {m:3d} rows: {t_plain * 1e3:7.3f} ms plain, {t_split * 1e3:7.3f} ms split: "
                  f"{t_split / t_plain:.2f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)
    print(f"CPU capability {torch.backends.cpu.get_cpu_capability()}, VNNI {not quant.SIGN_SPLIT}, "
          f"{args.threads} thread(s)")
    print("Accuracy against float32 (bundled model, 700 tokens of lsp_server/worker.py):")
    accuracy()
    print("Speed of the AVX2 kernel, split rows against plain 7-bit ones:")
    speed()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
