"""A training run's configuration: every `latent train` flag, declared once as an option
(model/options.py) with its help and limits, like every other setting of the project.

The flags and their checks come from here (`parse_args`), and a checkpoint keeps the whole
configuration, so `latent train export` rebuilds the run as it was. Options whose default
depends on the device (batch size, learning rate, processes, …) are None until `filled`.
RUN_DEFINING are those a resumed run must keep: a command that asks for others is refused.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from model.options import check, option
from model.train.corpus import MAX_POSITIONS
from model.train.presets import PRESETS

RUN_DEFINING = ("preset", "seq_len", "seed", "fim_rate", "spm_rate", "vocab_size", "optimizer")


@dataclass(frozen=True)
class TrainConfig:
    # the run and when it stops
    out: Path | None = option(None, "run folder: corpus/, checkpoint.pt, log.jsonl, model/; the same command "
                                    "resumes the run it holds (default ~/.cache/latent/runs/PRESET)")
    preset: str = option("small", "model shape", choices=tuple(sorted(PRESETS)))
    minutes: float | None = option(None, "stop this command after this many minutes, then export (default: go on "
                                         "until stopped with SIGTERM or Ctrl-C, which checkpoints)", min=0.01)
    max_steps: int | None = option(None, "stop the run at this many optimizer steps, then export", min=1)
    max_tokens: float | None = option(None, "stop the run at this many tokens seen, then export", min=1)
    decay: float = option(0.1, "length of the decay branch a model is exported from, as a share of the run's "
                               "steps", min=0.0, max=0.99)
    decay_steps: int | None = option(None, "length of the decay branch in steps (overrides --decay)", min=1)
    checkpoint_minutes: float = option(5.0, "minutes between checkpoints (also on SIGTERM / SIGINT)", min=0.01)
    init: str = option("auto", "weights of a run with no checkpoint: committed ones of the preset's shape (the "
                               "bundled model or model/train/resume, whichever has seen more tokens) when there "
                               "are any (auto) or required (committed), or random",
                       choices=("auto", "committed", "random"))
    # the optimization
    optimizer: str = option("adamw", "AdamW, or Muon for the hidden matrices with AdamW for the rest",
                            choices=("adamw", "muon"))
    device: str = option("cpu", "cpu or cuda (bf16 autocast)")
    batch_size: int = option(0, "rows per step, over all processes (0: 16 on CPU, 128 on CUDA)", min=0)
    seq_len: int = option(1024, "tokens per row", min=32, max=MAX_POSITIONS - 1)
    seed: int = option(0, "seed of the weights, the data order and the FIM holes")
    lr: float = option(0.0, "peak learning rate (0: 2e-3 on CPU, 3e-3 on CUDA)", min=0.0)
    weight_decay: float = option(0.1, "AdamW's weight decay", min=0.0)
    warmup_steps: int = option(100, "steps of linear warm-up", min=0)
    clip: float = option(1.0, "gradient norm clipping", min=0.0)
    fim_rate: float = option(0.9, "share of samples in FIM form (Code Llama's 0.9: every request the product "
                                  "makes is one)", min=0.0, max=1.0)
    spm_rate: float = option(1.0, "share of the FIM samples laid out suffix-first (SPM), the rest prefix-first "
                                  "(PSM); one layout, the one the product asks in, so the model never has to "
                                  "tell them apart", min=0.0, max=1.0)
    balance_coef: float = option(0.01, "expert balance loss weight", min=0.0)
    # evaluation and logs
    eval_every: float = option(0.0, "minutes between held-out checks (0: a tenth of --minutes, 0.5-10)",
                               min=0.0)
    eval_rows: int = option(-1, "rows of each held-out set in periodic checks, 0 = all (-1: 48 on CPU, all on "
                                "CUDA)", min=-1)
    final_eval_rows: int = option(-1, "rows of each held-out set in the check of the exported model, 0 = all "
                                      "(-1: 192 on CPU, all on CUDA)", min=-1)
    heldout_tokens: int = option(1_000_000, "evaluate on the held-out files up to this many tokens, 0 = all",
                                 min=0)
    log_every: int = option(10, "steps between log lines", min=1)
    # how it runs
    threads: int = option(0, "CPU threads for torch in each process (0: the cores shared among --procs; "
                              "torch's own choice on CUDA)", min=0)
    procs: int = option(0, "processes training together, each on its share of every batch and of the cores (0: "
                           "one per core on the CPU, at most 2; 1 on CUDA)", min=0)
    data_workers: int = option(-1, "processes building epochs ahead, 0 = one background thread (-1: 1 on CPU, "
                                   "up to 8 on CUDA)", min=-1)
    experts: str = option("grouped_mm", "transformers' experts implementation (auto: its own choice)",
                          choices=("auto", "eager", "grouped_mm"))
    compile: bool | None = option(None, "torch.compile the training step (default: on the CPU, where it is "
                                        "measured)")
    shard_mib: float = option(16.0, "largest weights file of the exported model; bigger models are sharded",
                              min=0.01)
    # the corpus
    corpus_dir: Path | None = option(None, "train on the .py files under this folder (default: "
                                           "~/.cache/latent/corpus/files, which `latent train corpus` builds, if "
                                           "it is there, else the running interpreter's standard library)")
    corpus_cache: Path | None = option(None, "a prepared corpus folder (tokenizer + ids), e.g. made on another "
                                             "machine with --prepare-only")
    vocab_size: int = option(8192, "BPE entries, specials included", min=300, max=65535)
    prepare_only: bool = option(False, "write OUT/corpus (tokenizer + token ids) and stop")
    max_mib: float = option(0.0, "keep the prepared token ids (ids.xz) within this many MiB by leaving out a "
                                 "random share of training files, e.g. to carry the corpus to a GPU machine "
                                 "(0: no limit)", min=0.0)
    tokenizer_mb: float = option(0.0, "train the tokenizer on this many MB of the training split, a stable "
                                      "sample (0: all of it)", min=0.0)

    def __post_init__(self) -> None:
        check(self)

    def filled(self, default_out: Path) -> "TrainConfig":
        """The options left to the device (0, -1 or None) given their values; `default_out` is
        the run folder when none was asked for."""
        cuda = self.device.startswith("cuda")
        procs = self.procs or (1 if cuda else max(1, min(2, os.cpu_count() or 1)))
        return replace(
            self, out=(self.out or default_out).expanduser(), procs=procs,
            compile=(not cuda) if self.compile is None else self.compile,
            threads=self.threads or (0 if cuda else max(1, (os.cpu_count() or 1) // procs)),
            batch_size=self.batch_size or (128 if cuda else 16),
            lr=self.lr or (3e-3 if cuda else 2e-3),
            eval_rows=self.eval_rows if self.eval_rows >= 0 else (0 if cuda else 48),
            final_eval_rows=self.final_eval_rows if self.final_eval_rows >= 0 else (0 if cuda else 192),
            data_workers=(self.data_workers if self.data_workers >= 0   # CPU: one process builds the next part
                          else min(8, max(1, (os.cpu_count() or 2) - 4)) if cuda else 1),
            eval_every=self.eval_every or (min(10.0, max(0.5, self.minutes / 10)) if self.minutes else 10.0))

    @property
    def run_dir(self) -> Path:
        assert self.out is not None, "TrainConfig.filled gives the run folder"
        return self.out

    def saved(self) -> dict:
        """The whole configuration as a checkpoint keeps it (paths as strings)."""
        return {k: str(v) if isinstance(v, Path) else v for k, v in vars(self).items()}
