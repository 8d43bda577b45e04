"""Where a run starts, and what it hands to the next one.

A run folder (`~/.cache/latent/runs/<preset>` by default) holds the corpus cache, the
checkpoint and the log; the same command resumes from the checkpoint. A machine without one —
a new machine, every time the project's work moves — starts from the committed bundled model
when it has this run's shape and tokenizer, with a fresh optimizer, and goes on reading the
corpus where that model's training stopped: `training.json` in an exported folder holds the
tokens it has seen and its data cursor.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from model.train.corpus import Corpus

TRAINING_NOTE = "training.json"
SHAPE_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "q_lora_rank",
              "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "intermediate_size",
              "moe_intermediate_size", "n_routed_experts", "n_shared_experts", "num_experts_per_tok",
              "first_k_dense_replace")


def default_run_dir(preset: str) -> Path:
    return Path.home() / ".cache" / "latent" / "runs" / preset


def bundled_dir() -> Path:
    from model.loader import BUNDLED_DIR
    return BUNDLED_DIR


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def corpus_identity(corpus: Corpus) -> dict:
    """What must match for a data cursor to mean the same rows: the manifest, the tokenizer and
    the number of training tokens."""
    return {"manifest_sha256": corpus.meta.get("manifest_sha256"),
            "tokenizer_sha256": file_sha256(corpus.root / "tokenizer.json"),
            "train_tokens": corpus.meta["train"]["tokens"]}


def bundled_tokenizer(preset_config: dict, folder: Path | None = None) -> Path | None:
    """The bundled model's tokenizer.json when the bundled model has this run's shape (so the
    run will start from it and its corpus must be tokenised alike), else None."""
    folder = folder or bundled_dir()
    config = _read_json(folder / "config.json")
    if config is None or any(config.get(k) != preset_config.get(k) for k in SHAPE_KEYS):
        return None
    return folder / "tokenizer.json" if (folder / "tokenizer.json").is_file() else None


def bundled_start(config: dict, corpus: Corpus, seed: int,
                  folder: Path | None = None) -> tuple[dict | None, str, dict | None]:
    """(weights, a sentence saying where the run starts, data cursor) for a run with no
    checkpoint: the bundled model's weights when its shape and tokenizer are this run's,
    else (None, why not, None) and the run starts from random weights. The cursor is the
    bundled model's, when it was trained on this corpus with this seed."""
    from safetensors.torch import load_file

    from model.train.export import import_state_dict

    folder = folder or bundled_dir()
    theirs = _read_json(folder / "config.json") or {}
    mismatch = [k for k in SHAPE_KEYS if theirs.get(k) != config.get(k)]
    if mismatch:
        return None, (f"random weights: the bundled model ({folder}) has another shape "
                      f"({', '.join(f'{k} {theirs.get(k)}' for k in mismatch[:3])}…)"), None
    if file_sha256(folder / "tokenizer.json") != file_sha256(corpus.root / "tokenizer.json"):
        return None, (f"random weights: the corpus cache {corpus.root} was tokenised with another tokenizer "
                      f"than the bundled model's"), None
    tensors = {}
    for path in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(str(path)))
    weights = import_state_dict(tensors)
    note = _read_json(folder / TRAINING_NOTE) or {}
    cursor = None
    if note.get("corpus") == corpus_identity(corpus) and note.get("seed") == seed:
        cursor = {**note["cursor"], "steps": note.get("steps", 0), "history": note.get("history", [])}
        where = f", reading the corpus on from its cursor ({cursor['tokens'] / 1e6:.1f}M tokens seen)"
    else:
        where = ", reading the corpus from the start (it was trained on another corpus or seed)"
    return weights, f"the bundled model's weights ({folder}) with a fresh optimizer{where}", cursor


def write_training_note(folder: Path, corpus: Corpus, seed: int, state, history: list, extra: dict) -> None:
    """`training.json` of an exported model: tokens seen, the data cursor the next run goes on
    from, the corpus it applies to, and the held-out curve."""
    note = {"tokens": state.tokens, "steps": state.step, "seed": seed, "corpus": corpus_identity(corpus),
            "cursor": {"epoch": state.epoch, "row": state.row, "tokens": state.tokens},
            "history": history, **extra}
    (folder / TRAINING_NOTE).write_text(json.dumps(note, indent=1) + "\n")


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
