"""`latent train`: build the corpus and train the bundled default model, reproducibly.

The model is a small DeepSeek-Coder-V2 look-alike — MoE feed-forward with a shared expert,
Multi-head Latent Attention with a real q-LoRA — trained with the fill-in-the-middle (FIM)
objective in the suffix-first layout (SPM; prefix-first PSM too with --spm-rate < 1) on permissively licensed
Python: a pinned manifest of PyPI packages plus the CPython standard library, with the
packages held out for evaluation excluded. It is saved in the Hugging Face layout of a real
DeepSeek-V2 checkpoint (bf16 safetensors), so the engine's ordinary loading path always runs
on it. docs/training.md has the measurements behind the choices.

    python -m model.train corpus                         # ~/.cache/latent/corpus: files/ + report
    nice -n 19 python -m model.train                     # the `small` preset on that corpus, until
                                                         # stopped; the same command resumes it
    python -m model.train export                         # a decay branch of it, as a model folder
    python -m model.train --prepare-only --corpus-dir ~/.cache/latent/corpus/files \
        --vocab-size 8192 --tokenizer-mb 120 --max-mib 40 --out .gpu    # tokenizer + ids.xz
    bash benchmarks/gpu_train.sh                         # on an H200 machine: smoke run + training
    python -m model.train.sizing vocab|latency …         # vocabulary size, per-keystroke latency

One job per file, in the order a run uses them:

    manifest.txt the pinned PyPI distributions (name==version)
    sources.py   the manifest, pip downloads, archives' metadata and .py files, held-out packages
    licenses.py  a package's license from its metadata, and the allowlist
    filters.py   per-file filters, HumanEval overlap, exact and MinHash near duplicates
    collect.py   `latent train corpus`: all of the above, the kept files and the report
    corpus.py    the .py files, the train / held-out split by path hash, the tokenizer, the cache
    samples.py   FIM (PSM and SPM) and plain samples, packing into rows, epoch parts, the feeder
    presets.py   the model's shapes, its HF config.json, the model itself
    evaluate.py  held-out rows and their figures: loss, bits per byte, FIM middle loss per layout
    optim.py     the warmup–stable–decay schedule, AdamW and Muon
    parallel.py  data parallelism over processes on one machine
    loop.py      balance loss, budget, the training loop, checkpoints, the decay branch
    start.py     where a run starts (its checkpoint, the bundled model, random) and training.json
    export.py    the Hugging Face model folder (bf16, ≤ 16 MiB shards) and its model card
    sizing.py    measurements: bytes per token per vocabulary size, per-keystroke latency
    cli.py       the flags and `main(argv)`

A run folder (`--out`, by default `~/.cache/latent/runs/<preset>`) holds `corpus/` (tokenizer
files + token ids), `checkpoint.pt` (the same command resumes from it), `log.jsonl` and, after
an export, `model/` — a model folder with `training.json`, the cursor the next run goes on from.
"""
from model.train.cli import main
from model.train.corpus import is_heldout

__all__ = ["main", "is_heldout"]
