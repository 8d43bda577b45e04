"""The command line: `latent train` / `python -m model.train`, its flags and `main(argv)`."""
from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import time
from pathlib import Path

import torch

from model.train.corpus import MAX_POSITIONS, Corpus, TrainError, describe, load_corpus, prepare_corpus, stdlib_root
from model.train.export import export_model, model_card
from model.train.loop import Budget, Trainer
from model.train.parallel import joined, launch
from model.train.presets import PRESETS, hf_config
from model.train.samples import trained_layouts
from model.train.start import committed_start, default_run_dir, start_tokenizer, write_training_note


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="latent train",
        description="Train Latent's bundled DeepSeek-V2-architecture coder on the corpus `latent train corpus` "
                    "builds. The run lives in a folder outside the repository and the same command resumes it; "
                    "SIGTERM or Ctrl-C checkpoints and stops it. Two more commands: `latent train corpus` builds the "
                    "corpus (see `latent train corpus --help`), `latent train export` takes a model out of a run "
                    "(see `latent train export --help`).")
    p.add_argument("--out", type=Path, help="run folder: corpus/, checkpoint.pt, log.jsonl, model/; the same "
                   "command resumes the run it holds (default ~/.cache/latent/runs/PRESET)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="small", help="model shape (default %(default)s)")
    p.add_argument("--minutes", type=float, help="stop this command after this many minutes, then export "
                   "(default: go on until stopped with SIGTERM or Ctrl-C, which checkpoints)")
    p.add_argument("--max-steps", type=int, help="stop the run at this many optimizer steps, then export")
    p.add_argument("--max-tokens", type=float, help="stop the run at this many tokens seen, then export")
    p.add_argument("--decay", type=float, default=0.1, help="length of the decay branch a model is exported "
                   "from, as a share of the run's steps (default %(default)s)")
    p.add_argument("--decay-steps", type=int, help="length of the decay branch in steps (overrides --decay)")
    p.add_argument("--checkpoint-minutes", type=float, default=5.0,
                   help="minutes between checkpoints (default %(default)s; also on SIGTERM / SIGINT)")
    p.add_argument("--init", choices=["auto", "committed", "random"], default="auto",
                   help="weights of a run with no checkpoint: committed ones of the preset's shape (the bundled "
                   "model or model/train/resume, whichever has seen more tokens) when there are any (auto) or "
                   "required (committed), or random (default %(default)s)")
    p.add_argument("--optimizer", choices=["adamw", "muon"], default="adamw",
                   help="AdamW, or Muon for the hidden matrices with AdamW for the rest (default %(default)s)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (bf16 autocast)")
    p.add_argument("--batch-size", type=int, help="rows per step, over all processes (default 16 on CPU, "
                   "128 on CUDA)")
    p.add_argument("--seq-len", type=int, default=1024, help="tokens per row (default %(default)s)")
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
                   "(default: a tenth of --minutes, 0.5–10)")
    p.add_argument("--eval-rows", type=int, help="rows of each held-out set in periodic checks, "
                   "0 = all (default 48 on CPU, all on CUDA)")
    p.add_argument("--final-eval-rows", type=int, help="rows of each held-out set in the check of the "
                   "exported model, 0 = all (default 192 on CPU, all on CUDA)")
    p.add_argument("--heldout-tokens", type=int, default=1_000_000, help="evaluate on the held-out files "
                   "up to this many tokens, 0 = all (default %(default)s)")
    p.add_argument("--log-every", type=int, default=10, help="steps between log lines")
    p.add_argument("--threads", type=int, help="CPU threads for torch in each process (default: the cores "
                   "shared among --procs)")
    p.add_argument("--procs", type=int, help="processes training together, each on its share of every batch "
                   "and of the cores (default: one per core on the CPU, at most 2; 1 on CUDA)")
    p.add_argument("--data-workers", type=int, help="processes building epochs ahead, 0 = one "
                   "background thread (default 0 on CPU, up to 8 on CUDA)")
    p.add_argument("--experts", default="grouped_mm", choices=["auto", "eager", "grouped_mm"],
                   help="transformers' experts implementation (default %(default)s; auto: its own choice)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction,
                   help="torch.compile the training step (default: on the CPU, where it is measured)")
    p.add_argument("--shard-mib", type=float, default=16, help="largest weights file of the exported "
                   "model; bigger models are sharded (default %(default)s)")
    corpus = p.add_argument_group("corpus")
    corpus.add_argument("--corpus-dir", type=Path, help="train on the .py files under this folder (default: "
                        "~/.cache/latent/corpus/files, which `latent train corpus` builds, if it is there, "
                        "else the running interpreter's standard library)")
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
    if args.out is None:
        args.out = default_run_dir(args.preset)
    args.out = args.out.expanduser()
    if args.compile is None:
        args.compile = not cuda
    if args.procs is None:
        args.procs = 1 if cuda else max(1, min(2, os.cpu_count() or 1))
    if args.threads is None and not cuda:
        args.threads = max(1, (os.cpu_count() or 1) // args.procs)
    if args.max_tokens is not None:
        args.max_tokens = int(args.max_tokens)
    if args.batch_size is None:
        args.batch_size = 128 if cuda else 16
    if args.lr is None:
        args.lr = 3e-3 if cuda else 2e-3
    if args.eval_rows is None:
        args.eval_rows = 0 if cuda else 48
    if args.final_eval_rows is None:
        args.final_eval_rows = 0 if cuda else 192
    if args.data_workers is None:                # CPU: one process builds the next epoch part
        args.data_workers = min(8, max(1, (os.cpu_count() or 2) - 4)) if cuda else 1
    if args.eval_every is None:
        args.eval_every = min(10.0, max(0.5, args.minutes / 10)) if args.minutes else 10.0


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
    for name in ("minutes", "max_steps", "max_tokens", "decay_steps", "checkpoint_minutes"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            raise TrainError(f"--{name.replace('_', '-')} must be positive")
    if not 0 <= args.decay < 1:
        raise TrainError("--decay must lie between 0 and 1")
    if args.procs < 1 or args.batch_size % args.procs:
        raise TrainError(f"--batch-size {args.batch_size} must be a multiple of --procs {args.procs}")
    if args.procs > 1 and args.device.startswith("cuda"):
        raise TrainError("--procs > 1 is for the CPU; on CUDA use one process")


def default_corpus_dir() -> Path:
    """What `latent train` reads without --corpus-dir: the corpus `latent train corpus` built,
    or else the running interpreter's standard library."""
    from model.train.collect import DEFAULT_CACHE

    collected = DEFAULT_CACHE.expanduser() / "files"
    return collected if collected.is_dir() else stdlib_root()


def get_corpus(args: argparse.Namespace, log) -> Corpus:
    """The corpus cache to train on: --corpus-cache, else OUT/corpus (made if missing, or
    made again with --prepare-only), tokenised with the committed model's tokenizer when the run
    will start from that model."""
    if args.corpus_cache:
        corpus = load_corpus(args.corpus_cache.expanduser())
    elif (args.out / "corpus" / "corpus.json").is_file() and not args.prepare_only:
        corpus = load_corpus(args.out / "corpus")
    else:
        source = (args.corpus_dir or default_corpus_dir()).expanduser()
        if not source.is_dir():
            raise TrainError(f"corpus folder {source} does not exist")
        layouts = trained_layouts(args.fim_rate, args.spm_rate)
        tokenizer = (start_tokenizer(hf_config(PRESETS[args.preset], args.vocab_size, layouts))
                     if args.init != "random" else None)
        return prepare_corpus(source, args.out / "corpus", args.vocab_size, log, args.max_mib,
                              args.tokenizer_mb, tokenizer)
    if corpus.tokenizer.get_vocab_size() != args.vocab_size:
        args.vocab_size = corpus.tokenizer.get_vocab_size()
    log(f"corpus: {describe(corpus.meta)} (cache {corpus.root})")
    return corpus


def start_run(trainer: Trainer, args: argparse.Namespace, log) -> None:
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
    log(f"no checkpoint in {args.out}: starting from {note}")


def train(args: argparse.Namespace, argv: list[str], log=print) -> int:
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
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    command = ("latent train " + shlex.join(argv)).strip()
    corpus = get_corpus(args, log)
    if args.prepare_only:
        return 0
    children = []
    if group.world == 1 and args.procs > 1:
        group, children = launch(argv, args.procs, args.out, args.threads)
    trainer = Trainer(args, corpus, args.out, log, group)
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
                f"checkpoint saved in {args.out}: the same command goes on from it")
            return 0
        export_branch(trainer, args, args.out / "model", command, log)
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


def export_branch(trainer: Trainer, args: argparse.Namespace, out: Path, command: str, log) -> dict:
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
        saved = _run_args(out)
        args = parse_args([])
        vars(args).update(saved, out=out, compile=False, procs=1,   # compiling (~1 min) does not pay for a branch
                          threads=os.cpu_count() or 1)
        if ours.decay is not None:              # a share asked for here wins over the run's own length
            args.decay, args.decay_steps = ours.decay, None
        for name in ("decay_steps", "final_eval_rows", "threads"):
            if getattr(ours, name) is not None:
                setattr(args, name, getattr(ours, name))
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


def _run_args(out: Path) -> dict:
    """The arguments a run was started with, from its checkpoint."""
    path = out / "checkpoint.pt"
    if not path.is_file():
        raise TrainError(f"no checkpoint at {path}: start the run with `latent train` first")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=False)["args"]
    except Exception as e:
        raise TrainError(f"the checkpoint {path} cannot be read ({type(e).__name__}: {e})") from None
    for key in ("out", "corpus_dir", "corpus_cache"):
        if saved.get(key) is not None:
            saved[key] = Path(saved[key])
    return saved


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
    try:
        return train(args, argv)
    except TrainError as e:
        print(f"latent train: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("latent train: interrupted (the same command resumes from the last checkpoint)", file=sys.stderr)
        return 130
