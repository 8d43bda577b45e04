"""The command line: `latent train` / `python -m model.train`, its flags and `main(argv)`."""
from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import time
from dataclasses import fields, replace
from pathlib import Path

import torch

from model import options
from model.train.config import TrainConfig
from model.train.corpus import Corpus, TrainError, describe, load_corpus, prepare_corpus, stdlib_root
from model.train.export import export_model, model_card
from model.train.loop import Budget, Trainer
from model.train.parallel import joined, launch
from model.train.presets import PRESETS, hf_config
from model.train.samples import trained_layouts
from model.train.start import committed_start, default_run_dir, start_tokenizer, write_training_note


def parse_args(argv: list[str] | None) -> TrainConfig:
    """The run's configuration from the command line, its device-dependent options filled in; a
    value that does not fit its option is a TrainError (one sentence)."""
    p = argparse.ArgumentParser(
        prog="latent train",
        description="Train Latent's bundled DeepSeek-V2-architecture coder on the corpus `latent train corpus` "
                    "builds. The run lives in a folder outside the repository and the same command resumes it; "
                    "SIGTERM or Ctrl-C checkpoints and stops it. Two more commands: `latent train corpus` builds the "
                    "corpus (see `latent train corpus --help`), `latent train export` takes a model out of a run "
                    "(see `latent train export --help`).")
    options.add_arguments(p, TrainConfig, switches=True)
    namespace = p.parse_args(argv)
    try:
        config = options.build(TrainConfig, options.from_arguments(TrainConfig, namespace))
    except options.OptionError as e:
        raise TrainError(str(e).rstrip(".")) from None
    return config.filled(default_run_dir(config.preset))


def _check_args(args: TrainConfig) -> None:
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise TrainError("--device cuda: no CUDA device is available to this torch")
    if not args.device.startswith(("cpu", "cuda")):
        raise TrainError(f"--device {args.device}: use cpu or cuda")
    assert args.procs and args.batch_size, "filled: TrainConfig.filled gives them values"
    if args.batch_size % args.procs:
        raise TrainError(f"--batch-size {args.batch_size} must be a multiple of --procs {args.procs}")
    if args.procs > 1 and args.device.startswith("cuda"):
        raise TrainError("--procs > 1 is for the CPU; on CUDA use one process")


def default_corpus_dir() -> Path:
    """What `latent train` reads without --corpus-dir: the corpus `latent train corpus` built,
    or else the running interpreter's standard library."""
    from model.train.collect import DEFAULT_CACHE

    collected = DEFAULT_CACHE.expanduser() / "files"
    return collected if collected.is_dir() else stdlib_root()


def get_corpus(args: TrainConfig, log) -> Corpus:
    """The corpus cache to train on: --corpus-cache, else OUT/corpus (made if missing, or
    made again with --prepare-only), tokenised with the committed model's tokenizer when the run
    will start from that model."""
    if args.corpus_cache:
        corpus = load_corpus(args.corpus_cache.expanduser())
    elif (args.run_dir / "corpus" / "corpus.json").is_file() and not args.prepare_only:
        corpus = load_corpus(args.run_dir / "corpus")
    else:
        source = (args.corpus_dir or default_corpus_dir()).expanduser()
        if not source.is_dir():
            raise TrainError(f"corpus folder {source} does not exist")
        layouts = trained_layouts(args.fim_rate, args.spm_rate)
        tokenizer = (start_tokenizer(hf_config(PRESETS[args.preset], args.vocab_size, layouts))
                     if args.init != "random" else None)
        return prepare_corpus(source, args.run_dir / "corpus", args.vocab_size, log, args.max_mib,
                              args.tokenizer_mb, tokenizer)
    log(f"corpus: {describe(corpus.meta)} (cache {corpus.root})")
    return corpus


def start_run(trainer: Trainer, args: TrainConfig, log) -> None:
    """Resume from the run folder's checkpoint, or begin: from committed weights with this run's
    shape and tokenizer (and `--init` allows), else from random weights; says which."""
    if trainer.checkpoint_path.is_file():
        trainer.load_checkpoint()
        return
    if args.init == "random":
        note = "random weights (--init random)"
    else:
        weights, note, cursor = committed_start(trainer.config, trainer.corpus, args.seed)
        if weights is None and args.init == "committed":
            raise TrainError(f"--init committed: cannot start from {note.split(': ', 1)[1]}")
        if weights is not None:
            trainer.start_from(weights, note, cursor)
    trainer.state.origin = note
    log(f"no checkpoint in {args.run_dir}: starting from {note}")


def train(args: TrainConfig, argv: list[str], log=print) -> int:
    """One command: the corpus, then (unless --prepare-only) the run — resumed from its
    checkpoint — until its budget is spent (then a decay branch is exported to OUT/model) or it
    is stopped with SIGTERM / SIGINT (then it checkpoints and exits). With --procs > 1 this
    process is rank 0 and starts the others once the corpus is ready."""
    _check_args(args)
    group = joined()
    if not group.leader:
        log = _quiet
    if args.threads:
        torch.set_num_threads(args.threads)
    args.run_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    command = ("latent train " + shlex.join(argv)).strip()
    corpus = get_corpus(args, log)
    if args.prepare_only:
        return 0
    args = replace(args, vocab_size=corpus.tokenizer.get_vocab_size())   # a prepared corpus has its own
    children = []
    if group.world == 1 and args.procs > 1:
        group, children = launch(argv, args.procs, args.run_dir, args.threads)
    trainer = Trainer(args, corpus, args.run_dir, log, group)
    start_run(trainer, args, log)
    trainer.state.commands.append([trainer.state.step, command])
    log(f"model: preset {args.preset}, {trainer.n_params:,} parameters, {args.optimizer}; device {args.device}, "
        f"{group.world} × {torch.get_num_threads()} threads, compile {args.compile}; batch {args.batch_size} × "
        f"{args.seq_len}; held-out {trainer.heldout.tokens:,} tokens; start-up {time.time() - started:.0f} s")
    budget = Budget(args.minutes, args.max_steps, args.max_tokens, started)
    previous = {s: signal.signal(s, budget.ask_stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        why = trainer.run(budget)
        if why != "budget":
            log(f"stopped by {why} at step {trainer.state.step} ({trainer.state.tokens / 1e6:.2f}M tokens); "
                f"checkpoint saved in {args.run_dir}: the same command goes on from it")
            return 0
        export_branch(trainer, args, args.run_dir / "model", command, log)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        trainer.close()
        group.close()
        for child in children:
            child.wait(timeout=120)
    log(f"{(time.time() - started) / 60:.1f} min")
    return 0


def _quiet(*_args) -> None:
    """The log of a process other than rank 0."""


def export_branch(trainer: Trainer, args: TrainConfig, out: Path, command: str, log) -> dict:
    """The decay branch from the trainer's current state, evaluated and written to `out`."""
    steps = args.decay_steps or round(args.decay * trainer.state.step)
    final = trainer.decay(steps) if steps > 0 else trainer.heldout.evaluate(trainer.model, args.final_eval_rows)
    if not trainer.group.leader:
        return final
    export_model(trainer.model.state_dict(), trainer.config, trainer.corpus, out,
                 model_card(trainer, final, command), args.shard_mib)
    write_training_note(out, trainer.corpus, args.seed, trainer.state, trainer.state.history,
                        {"decay_steps": trainer.state.decay_steps, "final": final, "origin": trainer.state.origin,
                         "command": command})
    log(f"wrote {out} (step {trainer.state.step}, {trainer.state.tokens / 1e6:.2f}M tokens seen)")
    return final


def export_main(argv: list[str]) -> int:
    """`latent train export`: a decay branch from a run's checkpoint, written as a model folder;
    the run itself is left as it was (it goes on from its stable phase)."""
    p = argparse.ArgumentParser(
        prog="latent train export",
        description="Take a model out of a training run: a decay branch (learning rate falling to 0) from "
                    "a copy of its last checkpoint, evaluated and written as a model folder.")
    p.add_argument("--out", type=Path, default=default_run_dir("small"),
                   help="the run folder (default %(default)s)")
    p.add_argument("--to", type=Path, help="model folder to write (default OUT/model)")
    p.add_argument("--decay", type=float, help="branch length as a share of the run's steps (default: the run's)")
    p.add_argument("--decay-steps", type=int, help="branch length in steps")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: every core)")
    p.add_argument("--final-eval-rows", type=int, help="rows of each held-out set to evaluate, 0 = all")
    try:
        ours = p.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    out = ours.out.expanduser()
    try:
        args = replace(_run_config(out), out=out, compile=False, procs=1,   # compiling (~1 min) does not pay
                       threads=os.cpu_count() or 1)                        # for a branch
        if ours.decay is not None:              # a share asked for here wins over the run's own length
            args = replace(args, decay=ours.decay, decay_steps=None)
        args = replace(args, **{name: getattr(ours, name) for name in ("decay_steps", "final_eval_rows", "threads")
                                if getattr(ours, name) is not None})
        if args.threads:
            torch.set_num_threads(args.threads)
        corpus = get_corpus(args, print)
        trainer = Trainer(args, corpus, out, print)
        trainer.load_checkpoint()
        command = "latent train export " + shlex.join(argv)
        export_branch(trainer, args, (ours.to or out / "model").expanduser(), command.strip(), print)
        trainer.close()
    except TrainError as e:
        print(f"latent train export: error: {e}", file=sys.stderr)
        return 2
    return 0


def _run_config(out: Path) -> TrainConfig:
    """The configuration a run was started with, from its checkpoint."""
    path = out / "checkpoint.pt"
    if not path.is_file():
        raise TrainError(f"no checkpoint at {path}: start the run with `latent train` first")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=False)["args"]
    except Exception as e:
        raise TrainError(f"the checkpoint {path} cannot be read ({type(e).__name__}: {e})") from None
    known = {f.name for f in fields(TrainConfig)}
    try:
        return options.build(TrainConfig, {k: v for k, v in saved.items() if k in known and v is not None})
    except options.OptionError as e:
        raise TrainError(f"the checkpoint {path} holds a configuration this version refuses: {e}") from None


def corpus_main(argv: list[str]) -> int:
    """`latent train corpus`: download, filter and report the training corpus."""
    from model.train.collect import DEFAULT_CACHE, collect
    from model.train.sources import MANIFEST

    p = argparse.ArgumentParser(
        prog="latent train corpus",
        description="Download the manifest's packages with pip, keep the permissively licensed, filtered, "
                    "de-duplicated .py files (plus the standard library) and write report.json / report.md.")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE,
                   help="downloads/, files/ and the reports go here (default %(default)s)")
    p.add_argument("--manifest", type=Path, default=MANIFEST, help="name==version lines (default: the "
                   "committed model/train/manifest.txt)")
    p.add_argument("--humaneval", type=Path, help="folder of HumanEval *.jsonl.gz whose prompts and solutions no "
                   "kept file may share lines with (default: their line windows committed in "
                   "model/train/humaneval_windows.bin)")
    p.add_argument("--no-stdlib", action="store_true", help="leave out the CPython standard library")
    p.add_argument("--jobs", type=int, default=4, help="pip downloads at once (default %(default)s)")
    try:
        args = p.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    if args.humaneval and not any(args.humaneval.glob("*.jsonl.gz")):
        print(f"latent train corpus: error: {args.humaneval} holds no HumanEval *.jsonl.gz files", file=sys.stderr)
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
    if argv[:1] == ["export"]:
        return export_main(argv[1:])
    try:
        args = parse_args(argv)
    except SystemExit as e:                      # --help, or a usage error already printed
        return int(e.code or 0)
    except TrainError as e:
        print(f"latent train: error: {e}", file=sys.stderr)
        return 2
    try:
        return train(args, argv)
    except TrainError as e:
        print(f"latent train: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("latent train: interrupted (the same command resumes from the last checkpoint)", file=sys.stderr)
        return 130
