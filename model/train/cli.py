"""The command line: `latent train` / `python -m model.train`, its flags and `main(argv)`."""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

import torch

from model.train.corpus import (MAX_POSITIONS, Corpus, TrainError, describe, load_corpus, prepare_corpus,
                                stdlib_root)
from model.train.export import export_model, model_card
from model.train.loop import Budget, Trainer
from model.train.presets import PRESETS


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="latent train",
        description="Train Latent's bundled DeepSeek-V2-architecture coder (on the standard library, or "
                    "on the corpus `latent train corpus` builds: --corpus-dir ~/.cache/latent/corpus/files).")
    p.add_argument("--out", type=Path, default=Path("runs/bundled"),
                   help="run directory: corpus/, checkpoint.pt, log.jsonl, model/ (default %(default)s)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="bundled", help="model shape")
    p.add_argument("--minutes", type=float, help="time budget of the run, evaluation and export included "
                   "(default 30 when --max-steps is not given)")
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    p.add_argument("--device", default="cpu", help="cpu or cuda (bf16 autocast)")
    p.add_argument("--batch-size", type=int, help="rows per step (default 8 on CPU, 128 on CUDA)")
    p.add_argument("--seq-len", type=int, default=512, help="tokens per row (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, help="peak learning rate (default 2e-3 on CPU, 3e-3 on CUDA)")
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--clip", type=float, default=1.0, help="gradient norm clipping")
    p.add_argument("--fim-rate", type=float, default=0.5, help="share of samples in FIM form (default %(default)s)")
    p.add_argument("--spm-rate", type=float, default=0.5, help="share of the FIM samples laid out suffix-first "
                   "(SPM), the rest prefix-first (PSM) (default %(default)s)")
    p.add_argument("--balance-coef", type=float, default=0.01, help="expert balance loss weight")
    p.add_argument("--eval-every", type=float, help="minutes between held-out checks "
                   "(default: a tenth of --minutes, 0.5–5)")
    p.add_argument("--eval-rows", type=int, help="rows of each held-out set in periodic checks, "
                   "0 = all (default 24 on CPU, all on CUDA)")
    p.add_argument("--final-eval-rows", type=int, help="rows of each held-out set in the final "
                   "check of the best weights, 0 = all (default 96 on CPU, all on CUDA)")
    p.add_argument("--heldout-tokens", type=int, default=1_000_000, help="evaluate on the held-out files "
                   "up to this many tokens, 0 = all (default %(default)s)")
    p.add_argument("--log-every", type=int, default=10, help="steps between log lines")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    p.add_argument("--data-workers", type=int, help="processes building epochs ahead, 0 = one "
                   "background thread (default 0 on CPU, up to 8 on CUDA)")
    p.add_argument("--experts", default="auto", choices=["auto", "eager", "grouped_mm"],
                   help="transformers' experts implementation (default: its own choice)")
    p.add_argument("--compile", action="store_true", help="torch.compile the training step")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--shard-mib", type=float, default=16, help="largest weights file of the exported "
                   "model; bigger models are sharded (default %(default)s)")
    corpus = p.add_argument_group("corpus")
    corpus.add_argument("--corpus-dir", type=Path, help="train on the .py files under this folder "
                        "instead of the running interpreter's standard library")
    corpus.add_argument("--corpus-cache", type=Path, help="a prepared corpus folder (tokenizer + ids), "
                        "e.g. made on another machine with --prepare-only")
    corpus.add_argument("--vocab-size", type=int, default=8192, help="BPE entries, specials included")
    corpus.add_argument("--prepare-only", action="store_true",
                        help="write OUT/corpus (tokenizer + token ids) and stop")
    corpus.add_argument("--max-mib", type=float, default=0, help="keep the prepared token ids (ids.xz) "
                        "within this many MiB by leaving out a random share of training files, e.g. to "
                        "carry the corpus to a GPU machine (default: no limit)")
    corpus.add_argument("--tokenizer-mb", type=float, default=0, help="train the tokenizer on this many MB "
                        "of the training split, a stable sample (default: all of it)")
    args = p.parse_args(argv)
    _fill_defaults(args)
    return args


def _fill_defaults(args: argparse.Namespace) -> None:
    cuda = args.device.startswith("cuda")
    if args.minutes is None and args.max_steps is None:
        args.minutes = 30.0
    if args.batch_size is None:
        args.batch_size = 128 if cuda else 8
    if args.lr is None:
        args.lr = 3e-3 if cuda else 2e-3
    if args.eval_rows is None:
        args.eval_rows = 0 if cuda else 24
    if args.final_eval_rows is None:
        args.final_eval_rows = 0 if cuda else 96
    if args.data_workers is None:
        args.data_workers = min(8, max(1, (os.cpu_count() or 2) - 4)) if cuda else 0
    if args.eval_every is None:
        args.eval_every = min(5.0, max(0.5, (args.minutes or 30.0) / 10))


def _check_args(args: argparse.Namespace) -> None:
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise TrainError("--device cuda: no CUDA device is available to this torch")
    if not args.device.startswith(("cpu", "cuda")):
        raise TrainError(f"--device {args.device}: use cpu or cuda")
    if not (0 <= args.fim_rate <= 1 and 0 <= args.spm_rate <= 1):
        raise TrainError("--fim-rate and --spm-rate must lie between 0 and 1")
    if args.vocab_size > 65535 or args.vocab_size < 300:
        raise TrainError("--vocab-size must lie between 300 and 65535")
    if args.seq_len + 1 > MAX_POSITIONS or args.seq_len < 32:
        raise TrainError(f"--seq-len must lie between 32 and {MAX_POSITIONS - 1}")
    if args.minutes is not None and args.minutes <= 0 or args.max_steps is not None and args.max_steps <= 0:
        raise TrainError("--minutes and --max-steps must be positive")


def get_corpus(args: argparse.Namespace, log) -> Corpus:
    """The corpus cache to train on: --corpus-cache, else OUT/corpus (made if missing, or
    made again with --prepare-only)."""
    if args.corpus_cache:
        corpus = load_corpus(args.corpus_cache)
    elif (args.out / "corpus" / "ids.xz").is_file() and not args.prepare_only:
        corpus = load_corpus(args.out / "corpus")
    else:
        source = args.corpus_dir or stdlib_root()
        if not source.is_dir():
            raise TrainError(f"corpus folder {source} does not exist")
        return prepare_corpus(source, args.out / "corpus", args.vocab_size, log, args.max_mib,
                              args.tokenizer_mb)
    if corpus.tokenizer.get_vocab_size() != args.vocab_size:
        args.vocab_size = corpus.tokenizer.get_vocab_size()
    log(f"corpus: {describe(corpus.meta)} (cache {corpus.root})")
    return corpus


def train(args: argparse.Namespace, command: str, log=print) -> int:
    """One run: the corpus, then (unless --prepare-only) training and the model folder."""
    _check_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    corpus = get_corpus(args, log)
    if args.prepare_only:
        return 0
    trainer = Trainer(args, corpus, args.out, log)
    if args.resume:
        trainer.load_checkpoint()
    log(f"model: preset {args.preset}, {trainer.n_params:,} parameters; device {args.device}; "
        f"batch {args.batch_size} × {args.seq_len}; held-out {trainer.heldout.tokens:,} tokens; "
        f"start-up {time.time() - started:.0f} s")
    final = trainer.run(Budget(args.minutes, args.max_steps, started))
    model_dir = args.out / "model"
    export_model(trainer.best, trainer.config, corpus, model_dir, model_card(trainer, final, command),
                 args.shard_mib)
    log(f"wrote {model_dir} ({trainer.state.tokens / 1e6:.2f}M tokens seen, "
        f"{trainer.state.step} steps, {(time.time() - started) / 60:.1f} min)")
    return 0


def corpus_main(argv: list[str]) -> int:
    """`latent train corpus`: download, filter and report the training corpus."""
    from model.train.collect import DEFAULT_CACHE, HUMANEVAL, collect
    from model.train.sources import MANIFEST

    p = argparse.ArgumentParser(
        prog="latent train corpus",
        description="Download the manifest's packages with pip, keep the permissively licensed, filtered, "
                    "de-duplicated .py files (plus the standard library) and write report.json / report.md.")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE,
                   help="downloads/, files/ and the reports go here (default %(default)s)")
    p.add_argument("--manifest", type=Path, default=MANIFEST, help="name==version lines (default: the "
                   "committed model/train/manifest.txt)")
    p.add_argument("--humaneval", type=Path, default=HUMANEVAL, help="folder of HumanEval *.jsonl.gz whose "
                   "prompts and solutions no kept file may share lines with (default %(default)s)")
    p.add_argument("--no-stdlib", action="store_true", help="leave out the CPython standard library")
    p.add_argument("--jobs", type=int, default=4, help="pip downloads at once (default %(default)s)")
    try:
        args = p.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    if args.humaneval and not args.humaneval.is_dir():
        print(f"latent train corpus: error: HumanEval folder {args.humaneval} does not exist", file=sys.stderr)
        return 2
    try:
        collect(args.cache.expanduser(), args.manifest, args.humaneval, not args.no_stdlib, args.jobs)
    except (OSError, ValueError) as e:
        print(f"latent train corpus: error: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    """`latent train` / `python -m model.train`; returns the exit status. `latent train corpus …`
    builds the corpus instead (see model/train/collect.py)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["corpus"]:
        return corpus_main(argv[1:])
    try:
        args = parse_args(argv)
    except SystemExit as e:                      # --help, or a usage error already printed
        return int(e.code or 0)
    command = "latent train " + shlex.join(argv) if argv else "latent train"
    try:
        return train(args, command.strip())
    except TrainError as e:
        print(f"latent train: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("latent train: interrupted (resume with --resume)", file=sys.stderr)
        return 130
