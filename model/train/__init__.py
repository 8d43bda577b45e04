"""`latent train`: train the bundled default model, reproducibly, from one command.

The model is a tiny DeepSeek-Coder-V2 look-alike — MoE feed-forward with a shared expert,
Multi-head Latent Attention with a real q-LoRA — trained with the fill-in-the-middle (FIM)
objective on the `.py` files of the running interpreter's standard library (PSF license).
It is saved in the Hugging Face layout of a real DeepSeek-V2 checkpoint, so the engine's
ordinary loading path always runs on it.

    python -m model.train                                # ~30 CPU minutes: a weak fallback
    python -m model.train --prepare-only --out .gpu      # tokenizer + corpus cache only
    python -m model.train --corpus-cache .gpu/corpus --device cuda --minutes 6.5 \\
        --seq-len 1024 --batch-size 128 --out runs/gpu   # the shipped model (H200, see its card)

One job per file, in the order a run uses them:

    corpus.py    the .py files, the train / held-out split by path hash, the tokenizer, the cache
    samples.py   FIM and plain samples, packing into rows, epoch rows, the epoch feeder
    presets.py   the model's shapes, its HF config.json, the model itself
    evaluate.py  held-out rows and their figures: loss, bits per byte, FIM middle loss
    loop.py      optimizer, schedule, balance loss, budget, the training loop, checkpoints
    export.py    the Hugging Face model folder and its model card
    cli.py       the flags and `main(argv)`

A run directory (`--out`) holds `corpus/` (tokenizer files + token ids), `checkpoint.pt`
(for `--resume`), `log.jsonl` and, at the end, `model/` — the finished model folder.
"""
from model.train.cli import main
from model.train.corpus import is_heldout

__all__ = ["main", "is_heldout"]
