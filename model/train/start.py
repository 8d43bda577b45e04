"""Where a run starts, and what it hands to the next one.

A run folder (`~/.cache/latent/runs/<preset>` by default) holds the corpus cache, the
checkpoint and the log; the same command resumes from the checkpoint. A machine without one —
a new machine, every time the project's work moves — starts from committed weights with this
run's shape and tokenizer: `model/train/resume/` (the stable-phase weights the last session
left) before the bundled model (a decay branch of them), else whichever has seen more tokens;
with a fresh optimizer, reading on where that training stopped: `training.json`
in an exported folder holds the tokens seen and the data cursor.
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


def resume_dir() -> Path:
    return Path(__file__).resolve().parent / "resume"


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def corpus_identity(corpus: Corpus) -> dict:
    """What must match for a data cursor to mean the same rows: the manifest, the tokenizer and
    the number of training tokens."""
    return {"manifest_sha256": corpus.meta.get("manifest_sha256"),
            "tokenizer_sha256": file_sha256(corpus.root / "tokenizer.json"),
            "train_tokens": corpus.meta["train"]["tokens"]}


def start_folders() -> list[Path]:
    """The committed model folders a run with no checkpoint may start from: the bundled model,
    and `model/train/resume/` — the stable-phase weights the last session left, kept so the
    next session goes on from them (its decay branch became the bundled model, or did not)."""
    return [resume_dir(), bundled_dir()]


def start_point(preset_config: dict) -> Path | None:
    """Of the start folders with this run's shape, stable-phase weights before a decay branch
    (the branch is a cooled copy: warmup-stable-decay goes on from the stable phase, and the
    bundled model is such a branch of the weights in `model/train/resume/`), then the one trained
    furthest (tokens seen, from its training.json; a folder without one counts 0)."""
    def rank(folder: Path) -> tuple[bool, int]:
        note = _read_json(folder / TRAINING_NOTE) or {}
        return not note.get("decay_steps"), note.get("tokens", 0)

    return max((f for f in start_folders() if _fits(f, preset_config)), key=rank, default=None)


def start_tokenizer(preset_config: dict) -> Path | None:
    """The tokenizer.json of the run's start point (its corpus must be tokenised alike), or
    None when the run starts from random weights."""
    folder = start_point(preset_config)
    return folder / "tokenizer.json" if folder else None


def committed_start(config: dict, corpus: Corpus, seed: int) -> tuple[dict | None, str, dict | None]:
    """(weights, a sentence saying where the run starts, data cursor) for a run with no
    checkpoint: the start point's weights when it has this run's shape and tokenizer, else
    (None, why not, None) and the run starts from random weights. The cursor is the start
    point's, when it was trained on this corpus with this seed."""
    from model.train.export import import_state_dict

    folder = start_point(config)
    if folder is None:
        theirs = _read_json(bundled_dir() / "config.json") or {}
        mismatch = [k for k in SHAPE_KEYS if theirs.get(k) != config.get(k)]
        return None, (f"random weights: the bundled model ({_shown(bundled_dir())}) has another shape "
                      f"({', '.join(f'{k} {theirs.get(k)}' for k in mismatch[:3])}…)"), None
    if file_sha256(folder / "tokenizer.json") != file_sha256(corpus.root / "tokenizer.json"):
        return None, (f"random weights: the corpus cache {corpus.root} was tokenised with another tokenizer "
                      f"than {_shown(folder)}"), None
    weights = import_state_dict(folder_tensors(folder))
    note = _read_json(folder / TRAINING_NOTE) or {}
    cursor = None
    if note.get("corpus") == corpus_identity(corpus) and note.get("seed") == seed:
        cursor = {**note["cursor"], "steps": note.get("steps", 0), "history": note.get("history", []),
                  "commands": note.get("commands", [])}
        where = f", reading the corpus on from its cursor ({cursor['tokens'] / 1e6:.1f}M tokens seen)"
    else:
        where = ", reading the corpus from the start (it was trained on another corpus or seed)"
    what = "the bundled model's" if folder == bundled_dir() else "the last session's stable-phase"
    return weights, f"{what} weights ({_shown(folder)}) with a fresh optimizer{where}", cursor


def folder_tensors(folder: Path) -> dict:
    """Every tensor of a model folder's safetensors files, under the names on disk."""
    from safetensors.torch import load_file

    tensors = {}
    for path in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(str(path)))
    return tensors


def _fits(folder: Path, preset_config: dict) -> bool:
    config = _read_json(folder / "config.json")
    return (config is not None and all(config.get(k) == preset_config.get(k) for k in SHAPE_KEYS)
            and (folder / "tokenizer.json").is_file())


def write_training_note(folder: Path, corpus: Corpus, seed: int, state, history: list, extra: dict) -> None:
    """`training.json` of an exported model: tokens seen, the data cursor the next run goes on
    from, the corpus it applies to, and the held-out curve."""
    note = {"tokens": state.tokens, "steps": state.step, "seed": seed, "corpus": corpus_identity(corpus),
            "cursor": {"epoch": state.epoch, "row": state.row, "tokens": state.tokens},
            "history": history, "commands": state.commands, **extra}
    (folder / TRAINING_NOTE).write_text(json.dumps(note, indent=1) + "\n")


def _shown(folder: Path) -> str:
    """The folder as a model card may name it: relative to the repository when inside it (no
    path of the machine that trained it)."""
    root = bundled_dir().parent.parent
    try:
        return folder.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return folder.name


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
