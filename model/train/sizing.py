"""Choosing the vocabulary size and the preset by measurement, on this machine.

    python -m model.train.sizing vocab --files ~/.cache/latent/corpus/files
    python -m model.train.sizing latency --tokenizer CORPUS_CACHE [--presets small medium large]

`vocab` trains a byte-level BPE of each size on a sample of the training split and reports
bytes per token on held-out files, next to the share of each preset's parameters that the
embedding and the output head (2 · vocab · hidden) take: a bigger vocabulary shortens every
sequence (more text per token of context and per decode step) but moves parameters from the
layers into two tables.

`latency` exports each preset with random weights and the given tokenizer in the shipped form
(bf16 safetensors), loads it with `Engine.load(folder, RuntimeConfig(threads=1))` and replays
typing into a ~1,500-token SPM prompt: one character per keystroke at the cursor, 16 new
tokens each, exact prefix reuse; the presets take turns over `--rounds` replays and each
keeps its least disturbed one. Random weights cost what trained ones do.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from model.fim import DEEPSEEK
from model.train.corpus import read_corpus, save_tokenizer_files, tokenizer_sample, train_tokenizer
from model.train.presets import PRESETS, build_model, hf_config

MiB = 2 ** 20


def parameter_count(preset: str, vocab_size: int) -> int:
    """Every parameter of the preset at this vocabulary (built on the meta device)."""
    with torch.device("meta"):
        model = build_model(hf_config(PRESETS[preset], vocab_size), "auto")
    return sum(p.numel() for p in model.parameters())


def measure_vocab(files_dir: Path, sizes: list[int], presets: list[str], sample_mb: float,
                  heldout_mb: float, save: Path | None = None, log=print) -> list[dict]:
    """Bytes per held-out token for each vocabulary size, and the embedding + head share;
    each tokenizer saved to `save`/vocab-N if given (for `latency --tokenizer`)."""
    files, _ = read_corpus(files_dir)
    sample = tokenizer_sample(files, sample_mb)
    heldout, size = [], 0
    for f in files:
        if f.heldout and size < heldout_mb * 1e6:
            heldout.append(f.text)
            size += len(f.text.encode())
    log(f"tokenizer sample {sum(map(len, sample)) / 1e6:.0f} MB, held-out {size / 1e6:.1f} MB "
        f"in {len(heldout)} files")
    rows = []
    for v in sizes:
        t0 = time.time()
        tok = train_tokenizer(sample, v)
        if save:
            save_tokenizer_files(tok, save / f"vocab-{v}")
        tokens = sum(len(e.ids) for e in tok.encode_batch(heldout, add_special_tokens=False))
        row = {"vocab": v, "bytes_per_token": size / tokens, "train_seconds": time.time() - t0}
        for p in presets:
            total = parameter_count(p, v)
            row[p] = {"params": total, "table_share": 2 * v * PRESETS[p].hidden / total}
        rows.append(row)
        log(f"vocab {v}: {row['bytes_per_token']:.3f} bytes/token ({row['train_seconds']:.0f} s)")
    return rows


def vocab_table(rows: list[dict], presets: list[str]) -> str:
    head = "| vocabulary | bytes / held-out token | " + " | ".join(
        f"{p}: params, embed+head share" for p in presets) + " |"
    lines = [head, "|" + "---|" * (2 + len(presets))]
    for r in rows:
        cells = " | ".join(f"{r[p]['params'] / 1e6:.1f}M, {r[p]['table_share']:.0%}" for p in presets)
        lines.append(f"| {r['vocab']:,} | {r['bytes_per_token']:.3f} | {cells} |")
    return "\n".join(lines)


# -- latency -------------------------------------------------------------------------------

def spm_keystrokes(tok, text: str, prompt_tokens: int = 1500, cursor: float = 0.75,
                   keystrokes: int = 24) -> list[str]:
    """SPM prompts of ~`prompt_tokens` tokens cut from `text`, the cursor after ~¾ of it; each
    keystroke types the next character of the text at the cursor."""
    ids = tok.encode(text, add_special_tokens=False).ids[:prompt_tokens]
    window = tok.decode(ids)
    cut = int(len(window) * cursor)
    prefix, typed, suffix = window[:cut], window[cut:cut + keystrokes], window[cut + keystrokes:]
    return [DEEPSEEK.fill(prefix + typed[:k], suffix, "spm") for k in range(keystrokes + 1)]


def random_engine(preset: str, tokenizer_dir: Path, folder: Path):
    """`preset` with random weights written to `folder` as the shipped form (bf16 safetensors),
    loaded by the engine at one thread; (engine, parameters, bytes of weights)."""
    from tokenizers import Tokenizer

    from model.engine import Engine
    from model.params import RuntimeConfig
    from model.train.export import export_state_dict, write_model_folder

    vocab = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json")).get_vocab_size()
    config = hf_config(PRESETS[preset], vocab)
    torch.manual_seed(0)
    model = build_model(config, "auto")
    write_model_folder(export_state_dict(model.state_dict(), config), config, tokenizer_dir, folder,
                       f"# random {preset}\n")
    weight_bytes = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    params = sum(p.numel() for p in model.parameters())
    return Engine.load(folder, RuntimeConfig(threads=1)), params, weight_bytes


def replay(engine, prompts: list[str], new_tokens: int = 16) -> dict:
    """The first prompt cold, then one generation per keystroke; latency and decode figures."""
    from model.params import SamplingParams

    params = SamplingParams(max_new_tokens=new_tokens)
    engine.generate(prompts[0], params).run()
    per_key, decode, prefilled = [], [], []
    for prompt in prompts[1:]:
        t0 = time.perf_counter()
        g = engine.generate(prompt, params)
        g.run()
        per_key.append((time.perf_counter() - t0) * 1e3)
        decode.append(g.stats.decode_ms / max(1, g.stats.generated_tokens))
        prefilled.append(g.stats.prefilled_tokens)
    return {"prompt_tokens": g.stats.prompt_tokens, "p50_ms": statistics.median(per_key),
            "p95_ms": float(np.percentile(per_key, 95)), "decode_ms_per_token": statistics.median(decode),
            "prefilled_per_key": statistics.median(prefilled)}


def measure_latency(presets: list[str], tokenizer_dir: Path, text: str, rounds: int = 3,
                    keystrokes: int = 24, log=print) -> list[dict]:
    """Per preset, the replay round with the lowest p50 out of `rounds`, the presets taking
    turns in each round: on a shared machine the least disturbed round is the best estimate."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    prompts = spm_keystrokes(tok, text, keystrokes=keystrokes)
    best: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        engines = {p: random_engine(p, tokenizer_dir, Path(tmp) / p) for p in presets}
        for r in range(rounds):
            for preset, (engine, params, weight_bytes) in engines.items():
                result = replay(engine, prompts)
                log(f"round {r + 1}, {preset}: p50 {result['p50_ms']:.0f} ms")
                if preset not in best or result["p50_ms"] < best[preset]["p50_ms"]:
                    best[preset] = {"preset": preset, "params": params, "weight_mib": weight_bytes / MiB, **result}
    return [best[p] for p in presets]


def latency_table(rows: list[dict]) -> str:
    lines = ["| preset | parameters | bf16 weights | per keystroke p50 | p95 | decode ms/token | "
             "tokens prefilled per keystroke |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['preset']} | {r['params'] / 1e6:.1f}M | {r['weight_mib']:.1f} MiB | "
                     f"{r['p50_ms']:.0f} ms | {r['p95_ms']:.0f} ms | {r['decode_ms_per_token']:.2f} | "
                     f"{r['prefilled_per_key']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m model.train.sizing", description=(__doc__ or "").split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    v = sub.add_parser("vocab", help="bytes per token against embedding share, per vocabulary size")
    v.add_argument("--files", type=Path, required=True, help="a corpus folder (latent train corpus: CACHE/files)")
    v.add_argument("--sizes", type=int, nargs="+", default=[8192, 16384, 24576, 32768])
    v.add_argument("--presets", nargs="+", default=["small", "medium", "large"])
    v.add_argument("--sample-mb", type=float, default=40, help="tokenizer training sample (default %(default)s)")
    v.add_argument("--heldout-mb", type=float, default=4, help="held-out text measured (default %(default)s)")
    v.add_argument("--save", type=Path, help="write each tokenizer to SAVE/vocab-N/")
    lat = sub.add_parser("latency", help="per-keystroke latency of each preset with random weights")
    lat.add_argument("--tokenizer", type=Path, required=True, help="a folder with tokenizer files (a corpus cache)")
    lat.add_argument("--presets", nargs="+", default=["bundled", "small", "medium", "large"])
    lat.add_argument("--rounds", type=int, default=3, help="replays per preset, the best kept (default %(default)s)")
    lat.add_argument("--text", type=Path, default=Path(__file__).with_name("samples.py"),
                     help="the file typed into (default: this package's samples.py)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.what == "vocab":
        rows = measure_vocab(args.files.expanduser(), args.sizes, args.presets, args.sample_mb, args.heldout_mb,
                             args.save)
        print(vocab_table(rows, args.presets))
    else:
        text = args.text.read_text()
        while len(text) < 12000:
            text += "\n\n" + text
        rows = measure_latency(args.presets, args.tokenizer.expanduser(), text, args.rounds,
                               log=lambda m: print(m, file=sys.stderr))
        print(latency_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
