"""`latent adapt`: a few minutes of the bundled model's own training on the user's repository.

The files of the workspace (the caller lists them: lsp_server/adapt.py), with every line that
may hold a secret left out (model/train/secrets.py), are tokenised with the base model's
tokenizer; a tenth of them, chosen by a stable hash of the path, are held out to say what the
adaptation gained. The run is the bundled model's training loop (model/train/loop.py) started
from the base model's weights with a fresh optimizer, training low-rank adapters by default
(`TRAINABLE`): fill-in-the-middle samples in the layouts the base declares, a short warm-up, a
constant rate for the first 80 % of the time budget (or of two passes over the code, whichever
ends first: more passes overfit), then a decay branch to zero. It checkpoints every minute and
on SIGTERM / Ctrl-C, and the same command goes on from the checkpoint with what is left of the
budget. The adapted model is written as a model folder beside the workspace's note
(model/adapted.py) — for LoRA only the adapters, which the loader adds to the base's weights as
they load — the run and the cleaned files are removed, and the summary says what it gained on
the held-out files.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from model.adapted import NOTE, TRAINED, Workspace, base_identity
from model.train.config import TrainConfig
from model.train.corpus import TrainError, load_corpus, prepare_corpus
from model.train.export import export_state_dict, import_state_dict, write_model_folder
from model.train.loop import Budget, Trainer
from model.train.presets import PRESETS, hf_config
from model.train.secrets import clean
from model.train.start import SHAPE_KEYS, folder_tensors

HELD_OUT_PERCENT = 10      # of the workspace's files, by a stable hash of the path
STABLE_SHARE = 0.8         # of the time budget at a constant rate; the rest decays to zero
# Passes over the workspace's code at most, whatever the time budget: on click (76k tokens),
# ~1.5 passes took its held-out bits/byte from 1.280 to 1.114, ~7 passes only to 1.135, and
# HumanEval single-line from 1.5 % to 0.0 % (benchmarks/adapt_bench.py, all weights trained).
MAX_EPOCHS = 2.0
HELD_OUT_TOKENS = 50_000   # of the held-out files evaluated before and after (~10 s each on 2 cores)
MIN_TOKENS = 2048          # of training text, below which there is nothing worth adapting to


def _layer(name: str) -> int:
    return int(name.split(".")[2]) if name.startswith("model.layers.") else -1


# Which weights an adaptation trains (benchmarks/adapt_bench.py compares them): every weight;
# low-rank adapters (LoRA, Hu et al. 2021) on every matrix of the attention and the MLPs, the
# experts included, the weights themselves frozen; the transformer blocks (not the token
# embedding and the output head, most of a small model's weights); the attention (MLA
# projections) only; the upper half of the blocks with the final norm and the head. Every
# weight is the default (model/adapted.py's TRAINED), by measurement on the 15M bundled model
# (docs/benchmarks.md): in the same minutes it learns a package 3-6 times as much as LoRA
# (held-out bits/byte -3 to -20 % against -0.4 to -1.5 %) and keeps HumanEval single-line
# (1.6 % -> 1.5-2.2 %). (On the earlier 4M model it forgot general code, 1.5 % -> 0.0-1.1 %,
# and LoRA was the default.) The price is a whole copy per workspace, 30 MB against 4 MB.
TRAINABLE = {
    "all": lambda name, layers: True,
    "lora": lambda name, layers: False,          # only the adapters add_lora puts on (below)
    "blocks": lambda name, layers: name.startswith("model.layers.") or name == "model.norm.weight",
    "attention": lambda name, layers: ".self_attn." in name,
    "top": lambda name, layers: _layer(name) >= layers // 2 or name in ("model.norm.weight", "lm_head.weight"),
}
assert set(TRAINABLE) == set(TRAINED), "model/adapted.py names the same choices"


LORA_RANK, LORA_ALPHA = 8, 16


class LowRank(torch.nn.Module):
    """A weight as LoRA trains it: W + (alpha / r) · B A, W frozen, B starting at zero. Works
    for a batch of matrices too (the experts' (E, out, in) weights)."""

    def __init__(self, weight: torch.Tensor, rank: int = LORA_RANK, alpha: float = LORA_ALPHA):
        super().__init__()
        *lead, out, inp = weight.shape
        self.A = torch.nn.Parameter(torch.randn(*lead, rank, inp, dtype=weight.dtype) / math.sqrt(inp))
        self.B = torch.nn.Parameter(torch.zeros(*lead, out, rank, dtype=weight.dtype))
        self.scale = alpha / rank

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.scale * (self.B @ self.A)


def add_lora(model: torch.nn.Module) -> None:
    """Freeze every weight, then put low-rank adapters on the matrices of the attention and the
    MLPs (dense, shared and routed experts; not the router)."""
    from torch.nn.utils import parametrize

    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for module_name, module in list(model.named_modules()):
        for name, parameter in list(module.named_parameters(recurse=False)):
            full = f"{module_name}.{name}"
            if parameter.dim() >= 2 and (".self_attn." in full or ".mlp." in full) and not full.endswith("mlp.gate.weight"):
                parametrize.register_parametrization(module, name, LowRank(parameter.detach()))


def lora_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapters under the checkpoint's own weight names, as the loader adds them
    ("<name>.lora_A" (r, in), ".lora_B" (out, r); model/loader.py): the experts' stacked
    weights are split per expert, the gate and up halves sharing their A."""
    from torch.nn.utils import parametrize

    out = {}
    for module_name, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        parametrizations: torch.nn.ModuleDict = module.parametrizations   # pyright: ignore[reportAssignmentType]
        for name, entry in parametrizations.items():
            low: LowRank = entry[0]                                     # pyright: ignore[reportIndexIssue]
            a, b = low.A.detach().float(), low.B.detach().float() * low.scale    # scale folded into B
            full = f"{module_name}.{name}"
            if name == "gate_up_proj":                                  # (E, 2I, d): gate, then up
                base, inter = full[: -len("gate_up_proj")], b.shape[1] // 2
                for e in range(a.shape[0]):
                    for part, rows in (("gate_proj", b[e, :inter]), ("up_proj", b[e, inter:])):
                        out[f"{base}{e}.{part}.weight.lora_A"] = a[e].clone()
                        out[f"{base}{e}.{part}.weight.lora_B"] = rows.clone()
            elif name == "down_proj" and a.dim() == 3:                  # (E, d, I)
                base = full[: -len("down_proj")]
                for e in range(a.shape[0]):
                    out[f"{base}{e}.down_proj.weight.lora_A"] = a[e].clone()
                    out[f"{base}{e}.down_proj.weight.lora_B"] = b[e].clone()
            else:
                out[f"{full}.lora_A"], out[f"{full}.lora_B"] = a.contiguous(), b.contiguous()
    return out


def write_adapters(model: torch.nn.Module, base_dir: Path, base_cfg: dict, out: Path, card: str) -> None:
    """A model folder of adapters: the base's config and tokenizer, the adapters, and where the
    base is (the bundled model by name, so the repository may move)."""
    from safetensors.torch import save_file

    from model.loader import ADAPTER, ADAPTER_CONFIG, BUNDLED_DIR
    from model.train.corpus import TOKENIZER_FILES

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(lora_tensors(model), str(tmp / ADAPTER), metadata={"format": "pt"})
    base = "bundled" if base_dir.resolve() == BUNDLED_DIR.resolve() else str(base_dir.resolve())
    (tmp / ADAPTER_CONFIG).write_text(json.dumps({"base": base, "scale": 1.0, "rank": LORA_RANK}, indent=1) + "\n")
    (tmp / "config.json").write_text(json.dumps(base_cfg, indent=2) + "\n")
    for name in (*TOKENIZER_FILES, "generation_config.json"):
        if (base_dir / name).is_file():
            shutil.copyfile(base_dir / name, tmp / name)
    (tmp / "README.md").write_text(card)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)


class AdaptError(Exception):
    """Why a workspace cannot be adapted, as one sentence."""


@dataclass
class Staged:
    files: int = 0
    lines_left_out: int = 0
    files_left_out: int = 0


def held_out(relpath: str) -> bool:
    return int.from_bytes(hashlib.sha256(relpath.encode()).digest()[:8], "big") % 100 < HELD_OUT_PERCENT


def preset_of(config: dict) -> str:
    """The training preset with the base model's shape."""
    for name, shape in PRESETS.items():
        mine = hf_config(shape, config.get("vocab_size", 0))
        if all(mine.get(k) == config.get(k) for k in SHAPE_KEYS):
            return name
    raise AdaptError("the model is not one Latent trains (only the bundled model and models of `latent train`'s "
                     "presets can be adapted)")


def stage(files: list[tuple[str, str]], folder: Path) -> Staged:
    """Write the files' text, lines that may hold secrets left out, under `folder`."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, mode=0o700)
    staged = Staged()
    for rel, text in files:
        cleaned = clean(rel, text)
        staged.lines_left_out += cleaned.lines_left_out
        staged.files_left_out += cleaned.file_left_out
        if not cleaned.text.strip():
            continue
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(cleaned.text, encoding="utf-8")
        staged.files += 1
    return staged


def _layouts_rate(config: dict) -> float:
    """spm_rate that trains the layouts the base declares."""
    layouts = config.get("fim_layouts") or ["psm", "spm"]
    return 1.0 if layouts == ["spm"] else 0.0 if layouts == ["psm"] else 0.5


def _write_note(ws: Workspace, note: dict) -> None:
    tmp = ws.home / (NOTE + ".tmp")
    tmp.write_text(json.dumps(note, indent=1) + "\n")
    os.replace(tmp, ws.home / NOTE)


def adapt(ws: Workspace, files: list[tuple[str, str]], base_dir: Path, minutes: float = 5.0, log=print,
          lr: float = 5e-4, threads: int = 0, train: str = TRAINED[0], passes: float = MAX_EPOCHS) -> dict:
    """Adapt the model in `base_dir` to `files` ((path relative to the workspace, text)) for
    `minutes` of training (what is left of them when a stopped run goes on). Returns the
    summary (also kept in the workspace's note), or {"stopped": …} when SIGTERM / SIGINT came
    (the run checkpoints; the same call goes on); raises AdaptError with one sentence."""
    try:
        base_cfg = json.loads((base_dir / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise AdaptError(f"the model folder {base_dir} has no readable config.json ({type(e).__name__})") from None
    if train not in TRAINABLE:
        raise AdaptError(f"train takes {', '.join(TRAINABLE)}, not {train!r}")
    preset = preset_of(base_cfg)
    budget = Budget()                       # its deadline is set when the run begins
    previous = {s: signal.signal(s, budget.ask_stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        return _adapt(ws, files, base_dir, base_cfg, preset, budget, minutes, log, lr, threads, train, passes)
    except AdaptError:
        if not ws.adapted() and not (ws.home / "run" / "checkpoint.pt").is_file():
            shutil.rmtree(ws.home, ignore_errors=True)      # nothing worth keeping was made
        raise
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _adapt(ws: Workspace, files, base_dir: Path, base_cfg: dict, preset: str, budget: Budget, minutes: float,
           log, lr: float, threads: int, train: str, passes: float) -> dict:
    identity = base_identity(base_dir)
    ws.home.mkdir(parents=True, exist_ok=True, mode=0o700)
    run_dir = ws.home / "run"
    note = ws.note()
    going_on = ((run_dir / "checkpoint.pt").is_file() and note.get("base_identity") == identity
                and note.get("train") == train and not note.get("summary"))
    try:
        if going_on:
            corpus = load_corpus(run_dir / "corpus")
            log(f"going on with the adaptation of {ws.root} from its checkpoint")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
            staged = stage(files, ws.home / "files")
            note = {"workspace": str(ws.root), "base": str(base_dir), "base_identity": identity, "train": train,
                    "minutes": minutes, "files": staged.files, "lines_left_out": staged.lines_left_out,
                    "files_left_out": staged.files_left_out, "started": time.time()}
            _write_note(ws, note)
            if staged.files < 2:
                raise AdaptError(f"{ws.root} holds {staged.files} file(s) of the model's languages to learn from; "
                                 f"adapting needs at least two")
            corpus = prepare_corpus(ws.home / "files", run_dir / "corpus", base_cfg["vocab_size"], lambda *_: None,
                                    tokenizer=base_dir / "tokenizer.json", held_out=held_out)
    except TrainError as e:
        raise AdaptError(str(e)) from None
    train_tokens = corpus.meta["train"]["tokens"]
    if train_tokens < MIN_TOKENS:
        raise AdaptError(f"{ws.root} holds {train_tokens:,} tokens of code to learn from; adapting needs at "
                         f"least {MIN_TOKENS:,}")
    seq_len = int(min(1024, max(64, train_tokens // 16)))
    args = TrainConfig(out=run_dir, preset=preset, fim_rate=0.9, spm_rate=_layouts_rate(base_cfg), lr=lr,
                       warmup_steps=10, compile=False, procs=1, threads=threads or (os.cpu_count() or 1),
                       data_workers=0, batch_size=8, seq_len=seq_len, eval_every=1e6, eval_rows=0,
                       final_eval_rows=0, checkpoint_minutes=1.0, heldout_tokens=HELD_OUT_TOKENS,
                       log_every=5).filled(run_dir)
    torch.set_num_threads(args.threads)
    layers = base_cfg["num_hidden_layers"]
    lora = train == "lora"
    trainer = Trainer(args, corpus, run_dir, log,
                      trainable=None if lora else lambda name: TRAINABLE[train](name, layers))
    try:
        if not going_on:     # the base's weights go in before any adapter (which renames them)
            trainer.start_from(import_state_dict(folder_tensors(base_dir)), f"the model in {base_dir}")
        if lora:
            add_lora(trainer.model)
            trainer.parameters_changed()
        if going_on:
            trainer.load_checkpoint()
        budget.deadline = time.time() + max(0.01, minutes * STABLE_SHARE - trainer.state.train_seconds / 60) * 60
        budget.max_tokens = max(1, int(passes * STABLE_SHARE * train_tokens))
        why = trainer.run(budget)
        if why != "budget":
            return {"stopped": why, "minutes_done": trainer.state.train_seconds / 60}
        before = trainer.state.history[0]
        final = trainer.decay(max(1, round(trainer.state.step * (1 - STABLE_SHARE) / STABLE_SHARE)))
        trained = sum(p.numel() for p in trainer.params)
        card = _card(ws, base_dir, note, before, final, trainer)
        if lora:        # only the adapters are kept: the base's weights are on disk already
            write_adapters(trainer.model, base_dir, base_cfg, ws.model_dir, card)
        else:
            write_model_folder(export_state_dict(trainer.model.state_dict(), trainer.config), base_cfg, corpus.root,
                               ws.model_dir, card, 64)
        summary = {"minutes": round(trainer.state.train_seconds / 60, 2), "steps": trainer.state.step, "train": train,
                   "trained_parameters": trained,
                   "tokens_seen": trainer.state.tokens, "train_tokens": train_tokens,
                   "files": int(len(corpus.files(heldout=False))), "heldout_files": int(len(corpus.files(heldout=True))),
                   "bpb_before": before["bpb"], "bpb_after": final["bpb"],
                   "fim_middle_loss_before": before["fim_middle_loss"], "fim_middle_loss_after": final["fim_middle_loss"],
                   "lines_left_out": note.get("lines_left_out", 0), "files_left_out": note.get("files_left_out", 0),
                   "bytes": sum(p.stat().st_size for p in ws.model_dir.iterdir())}
    finally:
        trainer.close()
    _write_note(ws, {**note, "summary": summary, "finished": time.time()})
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.rmtree(ws.home / "files", ignore_errors=True)
    return summary


def summary_line(ws: Workspace, s: dict) -> str:
    """The one line `latent adapt` ends with."""
    gain = 1 - s["bpb_after"] / s["bpb_before"]
    secrets = (f"; left out {s['lines_left_out']:,} lines that may hold secrets"
               + (f" ({s['files_left_out']} whole files)" if s["files_left_out"] else "")
               if s["lines_left_out"] else "")
    return (f"Adapted to {ws.root} in {s['minutes']:.1f} min: {s['files']} files ({s['train_tokens']:,} tokens), "
            f"held-out bits/byte {s['bpb_before']:.3f} -> {s['bpb_after']:.3f} ({gain:+.0%} better) on "
            f"{s['heldout_files']} file{'' if s['heldout_files'] == 1 else 's'} it did not learn from{secrets}.")


def _card(ws: Workspace, base_dir: Path, note: dict, before: dict, final: dict, trainer: Trainer) -> str:
    return f"""# Adapted model

A copy of the model in `{base_dir.name}` fine-tuned by `latent adapt` on the workspace
{ws.root.name}: {note.get('files')} files, lines that may hold secrets left out
({note.get('lines_left_out', 0)} lines, {note.get('files_left_out', 0)} whole files).
It stays on this machine, readable by its user only; `latent adapt --forget` removes it.

- steps {trainer.state.step}, tokens seen {trainer.state.tokens:,}, {trainer.state.train_seconds / 60:.1f} min
- held-out files of the workspace: bits/byte {before['bpb']:.3f} before, {final['bpb']:.3f} after;
  FIM middle loss {before['fim_middle_loss']:.3f} before, {final['fim_middle_loss']:.3f} after
"""
