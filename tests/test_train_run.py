"""A training run outlives every stop: the same `latent train` command resumes from the run
folder's checkpoint as if it had never stopped, SIGTERM checkpoints before it exits, a corrupt
checkpoint is one readable error, and a machine with no checkpoint starts from the bundled
model when it has the run's shape, going on with its data cursor."""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest
import torch

from model.train import main
from model.train.corpus import load_corpus
from model.train.presets import PRESETS, hf_config

STDLIB = Path(sysconfig.get_paths()["stdlib"])
FILES = ("textwrap.py", "colorsys.py", "bisect.py", "keyword.py", "heapq.py", "fnmatch.py", "shlex.py",
         "glob.py", "numbers.py", "string.py", "calendar.py", "gettext.py")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    for name in FILES:
        shutil.copyfile(STDLIB / name, folder / name)
    return folder


def argv(corpus_dir: Path, out: Path, *extra: str) -> list[str]:
    return ["--corpus-dir", str(corpus_dir), "--vocab-size", "600", "--preset", "tiny", "--seq-len", "64",
            "--batch-size", "4", "--threads", "1", "--procs", "1", "--no-compile", "--data-workers", "0",
            "--log-every", "1", "--decay", "0", "--eval-rows", "4", "--final-eval-rows", "4", "--out", str(out), *extra]


def checkpoint(out: Path) -> dict:
    return torch.load(out / "checkpoint.pt", weights_only=False)


def test_a_run_stopped_at_step_k_and_resumed_equals_one_never_stopped(corpus_dir, tmp_path):
    whole, halves = tmp_path / "whole", tmp_path / "halves"
    assert main(argv(corpus_dir, whole, "--max-steps", "12")) == 0
    assert main(argv(corpus_dir, halves, "--max-steps", "5")) == 0
    shutil.copytree(whole / "corpus", halves / "corpus", dirs_exist_ok=True)  # same cache, same bytes
    assert main(argv(corpus_dir, halves, "--max-steps", "12")) == 0
    a, b = checkpoint(whole), checkpoint(halves)
    assert a["state"]["step"] == b["state"]["step"] == 12
    assert (a["state"]["epoch"], a["state"]["row"], a["state"]["tokens"]) == \
        (b["state"]["epoch"], b["state"]["row"], b["state"]["tokens"])
    for name, tensor in a["model"].items():
        assert torch.allclose(tensor, b["model"][name], rtol=1e-4, atol=1e-6), name
    first = a["optimizer"][0]["state"]
    second = b["optimizer"][0]["state"]
    assert all(torch.allclose(first[k]["exp_avg_sq"], second[k]["exp_avg_sq"], rtol=1e-4, atol=1e-9)
               for k in first)
    steps = [json.loads(line)["train"]["step"] for line in (halves / "log.jsonl").read_text().splitlines()
             if '"train"' in line]
    assert steps == list(range(1, 13))          # each step once: the resumed run began at step 6


def test_two_processes_train_as_one_does(corpus_dir, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(argv(corpus_dir, one, "--max-steps", "6", "--balance-coef", "0")) == 0
    shutil.copytree(one / "corpus", two / "corpus")
    assert main([*argv(corpus_dir, two, "--max-steps", "6", "--balance-coef", "0"), "--procs", "2"]) == 0
    a, b = checkpoint(one), checkpoint(two)
    assert a["state"]["tokens"] == b["state"]["tokens"] and b["args"]["procs"] == 2
    logs = [(out / "log.jsonl").read_text().splitlines() for out in (one, two)]
    assert [len(log) for log in logs[1:]] == [len(logs[0])]          # rank 0 alone logs and evaluates
    for name, tensor in a["model"].items():
        assert torch.allclose(tensor, b["model"][name], rtol=1e-3, atol=1e-5), name


def test_sigterm_checkpoints_and_the_same_command_goes_on(corpus_dir, tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "model.train", *argv(corpus_dir, out, "--checkpoint-minutes", "60")]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = out / "log.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.is_file() and '"train"' in log.read_text()):
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[0]
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, output
    assert "stopped by SIGTERM" in output and "the same command goes on" in output
    stopped = checkpoint(out)["state"]["step"]
    assert stopped >= 1
    again = subprocess.run([*command, "--max-steps", str(stopped + 2)], cwd=ROOT, capture_output=True, text=True,
                           timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"resumed {out} at step {stopped}" in again.stdout
    assert checkpoint(out)["state"]["step"] == stopped + 2


def test_a_corrupt_checkpoint_is_one_readable_error_and_is_left_alone(corpus_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(argv(corpus_dir, out, "--max-steps", "2")) == 0
    (out / "checkpoint.pt").write_bytes(b"not a checkpoint")
    capsys.readouterr()
    assert main(argv(corpus_dir, out, "--max-steps", "4")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot be read" in err[0] and "checkpoint.pt" in err[0]
    assert (out / "checkpoint.pt").read_bytes() == b"not a checkpoint"
    assert main(argv(corpus_dir, out, "--max-steps", "4", "--seed", "3")) == 2     # another run's settings


def test_the_checkpoint_keeps_the_whole_configuration_and_bad_flags_are_one_sentence(corpus_dir, tmp_path,
                                                                                     capsys):
    """Training's flags are options like every other setting (model/train/config.py): each is
    checked against its declaration, and the checkpoint keeps every one of them."""
    from dataclasses import fields

    from model.train.config import TrainConfig

    out = tmp_path / "run"
    assert main(argv(corpus_dir, out, "--max-steps", "2", "--lr", "0.004")) == 0
    saved = checkpoint(out)["args"]
    assert set(saved) == {f.name for f in fields(TrainConfig)}
    assert (saved["lr"], saved["batch_size"], saved["procs"], saved["out"]) == (0.004, 4, 1, str(out))
    for bad, name in ((["--minutes", "-1"], "minutes"), (["--fim-rate", "1.5"], "fim_rate"),
                      (["--preset", "huge"], "preset")):
        capsys.readouterr()
        assert main(argv(corpus_dir, tmp_path / "bad", *bad)) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("latent train: error:") and name in err[0], err
    assert not (tmp_path / "bad").exists()


def test_a_run_refuses_a_corpus_cache_tokenised_otherwise(corpus_dir, tmp_path, capsys):
    out, other = tmp_path / "run", tmp_path / "other"
    assert main(argv(corpus_dir, out, "--max-steps", "2")) == 0
    fewer = tmp_path / "fewer"
    fewer.mkdir()
    for path in sorted(corpus_dir.iterdir())[:8]:
        shutil.copyfile(path, fewer / path.name)
    assert main(argv(fewer, other, "--prepare-only")) == 0        # same vocabulary size, another tokenizer
    capsys.readouterr()
    assert main([*argv(corpus_dir, out, "--max-steps", "4"), "--corpus-cache", str(other / "corpus")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "another corpus cache or tokenizer" in err[0]


def test_without_a_checkpoint_a_run_starts_from_committed_weights_and_their_cursor(corpus_dir, tmp_path,
                                                                                  monkeypatch, capsys):
    import model.train.start as start

    first = tmp_path / "first"
    assert main(argv(corpus_dir, first, "--max-steps", "6", "--decay-steps", "2")) == 0
    exported = first / "model"
    note = json.loads((exported / "training.json").read_text())
    assert note["steps"] == 8 and note["cursor"]["row"] > 0

    # a new machine: no run folder; the committed model is the one just exported
    monkeypatch.setattr(start, "bundled_dir", lambda: exported)
    monkeypatch.setattr(start, "resume_dir", lambda: tmp_path / "no-resume-folder")
    second = tmp_path / "second"
    capsys.readouterr()
    assert main(argv(corpus_dir, second, "--max-steps", "9")) == 0
    said = capsys.readouterr().out
    assert "starting from the bundled model's weights" in said and "fresh optimizer" in said
    assert "reading the corpus on from its cursor" in said
    corpus = load_corpus(second / "corpus")
    assert (second / "corpus" / "tokenizer.json").read_bytes() == (exported / "tokenizer.json").read_bytes()
    state = checkpoint(second)["state"]
    assert state["step"] == 9 and state["tokens"] > note["tokens"] and state["warmup_from"] == 8
    assert corpus.tokenizer.get_vocab_size() == 600

    # the session's candidate did not beat the bundled model: its stable weights are committed
    # instead (model/train/resume), and the next machine goes on from them, the furthest trained
    from model.train.cli import export_main

    resume = tmp_path / "resume"
    assert export_main(["--out", str(second), "--decay", "0", "--to", str(resume)]) == 0
    monkeypatch.setattr(start, "resume_dir", lambda: resume)
    fourth = tmp_path / "fourth"
    capsys.readouterr()
    assert main(argv(corpus_dir, fourth, "--max-steps", "10")) == 0
    said = capsys.readouterr().out
    assert "starting from the last session's stable-phase weights" in said
    assert checkpoint(fourth)["state"]["warmup_from"] == 9
    stable = checkpoint(second)["model"]
    started = json.loads((resume / "training.json").read_text())
    assert started["steps"] == 9 and started["decay_steps"] == 0 and "lm_head.weight" in stable

    # that session's decay branch beat the bundled model and replaced it: it has seen more tokens,
    # and still the next machine goes on from the stable weights (the branch is a cooled copy)
    branch = tmp_path / "branch"
    assert export_main(["--out", str(second), "--decay-steps", "2", "--to", str(branch)]) == 0
    assert json.loads((branch / "training.json").read_text())["tokens"] > started["tokens"]
    monkeypatch.setattr(start, "bundled_dir", lambda: branch)
    fifth = tmp_path / "fifth"
    capsys.readouterr()
    assert main(argv(corpus_dir, fifth, "--max-steps", "10")) == 0
    assert "starting from the last session's stable-phase weights" in capsys.readouterr().out

    # a run of another shape does not start from it, and says why
    third = tmp_path / "third"
    capsys.readouterr()
    assert main([*argv(corpus_dir, third, "--max-steps", "1"), "--preset", "bundled"]) == 0
    assert "starting from random weights: the bundled model" in capsys.readouterr().out
    assert hf_config(PRESETS["bundled"], 600)["hidden_size"] != json.loads((exported / "config.json").read_text())[
        "hidden_size"]


def test_export_takes_a_decay_branch_from_the_checkpoint_and_leaves_the_run_as_it_was(corpus_dir, tmp_path):
    out = tmp_path / "run"
    assert main(argv(corpus_dir, out, "--max-steps", "6")) == 0
    before = (out / "checkpoint.pt").read_bytes()
    from model.train.cli import export_main

    assert export_main(["--out", str(out), "--decay-steps", "3", "--to", str(tmp_path / "branch")]) == 0
    assert (out / "checkpoint.pt").read_bytes() == before
    note = json.loads((tmp_path / "branch" / "training.json").read_text())
    assert note["steps"] == 9 and note["decay_steps"] == 3
    assert export_main(["--out", str(tmp_path / "nowhere")]) == 2
