"""How far 4 and 8 bits move a model from its own float32: Latent's int4 and int8 against
llama.cpp's Q4_0 and Q8_0 of the same weights (#22).

    python benchmarks/q4_accuracy.py [--slice-layers 4] [--write docs/benchmarks.md]

Each side is compared with its own float32: Latent's quantize = "int4" / "int8" with Latent's
float32 engine, llama.cpp's Q4_0 / Q8_0 (made by its own `llama-quantize` from its converter's
f32 GGUF) with llama-server on that f32 GGUF. Teacher-forced over the same token ids — real code
(this repository's Python, which no model here was trained on) — the figure is how often the
greedy next token at a position is the float32 one's. Latent's come from one pass over all
positions (`Engine.logits`); llama-server's from one greedy one-token request per position, the
prefix cached, the KV cache in f32. Latent also gives the logits' relative error (llama-server
does not return whole logits).

Two models: the bundled one (4M parameters: small matrices, where 4 bits cost the most) on
`--tokens` ids, and the DeepSeek-Coder-V2-Lite-shaped slice of `benchmarks/lite_slice_bench.py`
(Lite's dimensions, `--slice-layers` layers, random bfloat16 weights) on `--slice-tokens`. With
random weights near-ties are common, so the slice's figures read lower than a trained model's
would; what matters is the two sides side by side. Needs llama.cpp built
(`benchmarks/llamacpp/build.sh`, as make bench-lite does) and ~20 GB of memory for the slice.
"""
from __future__ import annotations

import argparse
import gc
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from lite_slice_bench import make_checkpoint
from llamacpp.server import LlamaServer
from model.engine import Engine
from model.loader import BUNDLED_DIR
from model.params import RuntimeConfig
from report import publish

ROOT = Path(__file__).resolve().parent.parent
REMOTE = ROOT / ".remote"
SECTION = "## int4 and int8 against llama.cpp's Q4_0 and Q8_0: closeness to float32 (benchmarks/q4_accuracy.py)"
TEXT_FILES = ("lsp_server/worker.py", "completion/service.py", "model/engine/core.py", "completion/postprocess.py")
LLAMA = {"int8": "Q8_0", "int4": "Q4_0"}


def code_ids(engine: Engine, count: int) -> list[int]:
    text = "".join((ROOT / path).read_text() for path in TEXT_FILES)
    ids = engine.tokenizer.encode(text, add_bos=True)[:count]
    if len(ids) < count:
        raise SystemExit(f"only {len(ids)} tokens of code to compare on")
    return ids


def ggufs(folder: Path, stem: str, llama_dir: Path) -> dict[str, Path]:
    """f32, Q8_0 and Q4_0 GGUFs of a checkpoint: the converter's f32, the others quantized from it by
    llama-quantize (its defaults: the output head at 6 bits in Q4_0). Made once."""
    out = {"float32": REMOTE / f"{stem}-f32.gguf", "int8": REMOTE / f"{stem}-q8_0.gguf",
           "int4": REMOTE / f"{stem}-q4_0.gguf"}
    log = REMOTE / f"{stem}-convert.log"
    newest = max(f.stat().st_mtime for f in folder.iterdir())
    for stale in [f for f in out.values() if f.is_file() and f.stat().st_mtime < newest]:
        stale.unlink()                                  # the checkpoint changed since
    with log.open("a") as sink:
        if not out["float32"].is_file():
            run = [sys.executable, str(ROOT / "tests" / "remote" / "convert.py"), str(llama_dir), str(folder),
                   str(out["float32"]), "f32"]
            if subprocess.run(run, stdout=sink, stderr=subprocess.STDOUT).returncode:
                raise SystemExit(f"llama.cpp's converter failed; see {log}")
        for key in ("int8", "int4"):
            if not out[key].is_file():
                run = [str(llama_dir / "build" / "bin" / "llama-quantize"), str(out["float32"]), str(out[key]),
                       LLAMA[key]]
                if subprocess.run(run, stdout=sink, stderr=subprocess.STDOUT).returncode:
                    raise SystemExit(f"llama-quantize failed; see {log}")
    return out


def latent_side(folder: Path | None, ids: list[int]) -> dict:
    """Greedy picks and logits' relative error of int8 and int4 against Latent's float32."""
    out = {}
    reference = None
    eos = None
    for quantize in ("float32", "int8", "int4"):
        engine = Engine.load(folder, RuntimeConfig(compile=False, threads=2, max_context=len(ids) + 8,
                                                   quantize=None if quantize == "float32" else quantize))
        eos = engine.tokenizer.eos_id
        logits = engine.logits(ids)
        picks = logits.argmax(-1)
        if reference is None:
            reference = logits
            out["float32"] = {"picks": picks, "bytes": engine.weight_bytes}
        else:
            out[quantize] = {"agree": (picks == out["float32"]["picks"]).float().mean().item(),
                             "error": ((logits - reference).norm() / reference.norm()).item(),
                             "bytes": engine.weight_bytes}
        del engine, logits
        gc.collect()
    picks = out["float32"]["picks"].tolist()
    out["float32"]["picks"] = [-1 if p == eos else p for p in picks]
    return out


def llama_side(files: dict[str, Path], ids: list[int], server: Path, stem: str) -> dict:
    """llama-server's teacher-forced greedy picks on each GGUF; agreement with its f32's."""
    picks = {}
    for key, gguf in files.items():
        process = LlamaServer(server, gguf, 2, REMOTE / f"llama-{stem}-{key}.log")
        try:
            process.wait_ready(600)
            picks[key] = process.greedy_picks(ids)
        finally:
            process.close()
    agree = lambda a, b: sum(x == y for x, y in zip(a, b, strict=True)) / len(a)        # noqa: E731
    return {"picks": picks, **{key: {"agree": agree(picks[key], picks["float32"]), "bytes": files[key].stat().st_size}
                               for key in ("int8", "int4")}}


def measure(name: str, folder: Path | None, ids: list[int], args) -> dict:
    t = time.perf_counter()
    latent = latent_side(folder, ids)
    stem = "accuracy-bundled" if folder is None else f"accuracy-lite-slice-{args.slice_layers}"
    llama = llama_side(ggufs(folder or BUNDLED_DIR, stem, args.llama_dir), ids, args.server, stem)
    same = sum(a == b for a, b in zip(latent["float32"]["picks"], llama["picks"]["float32"], strict=True)) / len(ids)
    print(f"{name}: {time.perf_counter() - t:.0f} s", flush=True)
    return {"name": name, "tokens": len(ids), "latent": latent, "llama": llama, "float32_same": same}


def report(runs: list[dict]) -> str:
    lines = [SECTION, "",
             f"`python benchmarks/q4_accuracy.py --slice-layers {runs[-1]['layers']}` — {time.strftime('%Y-%m-%d')}, "
             f"{platform.machine()} with {os.cpu_count()} CPUs; llama.cpp of benchmarks/llamacpp/build.sh. Each side "
             "against its own float32, teacher-forced over the same ids of real code (this repository's Python): "
             "how often the greedy next token is float32's, and for Latent the logits' relative error.", "",
             "| model | tokens | Latent int8 | llama.cpp Q8_0 | Latent int4 | llama.cpp Q4_0 | "
             "Latent int8 / int4 logits' error | float32 picks, Latent = llama.cpp |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        la, ll = r["latent"], r["llama"]
        lines.append(f"| {r['name']} | {r['tokens']} | {la['int8']['agree']:.1%} | {ll['int8']['agree']:.1%} | "
                     f"{la['int4']['agree']:.1%} | {ll['int4']['agree']:.1%} | {la['int8']['error']:.1%} / "
                     f"{la['int4']['error']:.1%} | {r['float32_same']:.1%} |")
    lines += ["", "Both int4s use Q4_0's blocks (32 weights, one scale) and round alike; Latent keeps the output "
                  "head in int8 (per row), llama.cpp's Q4_0 file keeps it at 6 bits (Q6_K), and both quantize the "
                  "activations of a 4-bit product to 8-bit blocks of 32. The bundled model's matrices whose inputs "
                  "are not a multiple of 32 stay int8 in Latent; llama-quantize gives those a fallback type of its "
                  "own. The slice's weights are random, so many next tokens are near-ties: its agreement figures "
                  "are lower for both sides than a trained model's.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/q4_accuracy.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=1400, help="ids of the bundled model's run")
    parser.add_argument("--slice-layers", type=int, default=4, help="layers of the Lite-shaped slice (0: skip it)")
    parser.add_argument("--slice-tokens", type=int, default=256, help="ids of the slice's run")
    parser.add_argument("--server", type=Path, default=REMOTE / "llama.cpp" / "build" / "bin" / "llama-server")
    parser.add_argument("--llama-dir", type=Path, default=REMOTE / "llama.cpp")
    parser.add_argument("--write", type=Path, default=None, help="replace this section in a Markdown file")
    args = parser.parse_args(argv)
    if not args.server.is_file():
        raise SystemExit(f"{args.server} is not built: run benchmarks/llamacpp/build.sh first")
    bundled = Engine.load(None, RuntimeConfig(compile=False))
    runs = [measure("bundled (4M)", None, code_ids(bundled, args.tokens), args)]
    if args.slice_layers:
        folder = REMOTE / "lite-slice"
        make_checkpoint(folder, args.slice_layers)
        runs.append(measure(f"Lite-shaped slice, {args.slice_layers} layers (random)", folder,
                            code_ids(bundled, args.slice_tokens), args))
    del bundled
    for r in runs:
        r["layers"] = args.slice_layers
    publish(report(runs), args.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
