"""`latent train`: tokenizer, FIM samples, packing, export, and one end-to-end run.

The end-to-end run trains the `tiny` preset on a handful of standard-library files for a
few seconds and loads the result with transformers, as a user's `latent train` would.
"""
from __future__ import annotations

import json
import shutil
import sysconfig
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from model.train import main
from model.train.corpus import (BOS_ID, EOS_ID, FIM_BEGIN_ID, FIM_END_ID, FIM_HOLE_ID, SPECIAL_TOKENS, Corpus,
                                is_heldout, load_corpus, prepare_corpus)
from model.train.export import export_state_dict
from model.train.loop import lr_factor
from model.train.presets import PRESETS, build_model, hf_config
from model.train.samples import EpochFeeder, choose_hole, epoch_rows, make_samples, pack_rows

STDLIB = Path(sysconfig.get_paths()["stdlib"])
TINY_FILES = ("textwrap.py", "colorsys.py", "bisect.py", "keyword.py", "heapq.py",
              "fnmatch.py", "shlex.py", "glob.py", "this.py", "numbers.py")
TRICKY = "def f(x):\r\n\treturn x + 'é' + \"日本語\"  # emoji 🐍\n\n\n    \t\n"


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    for name in TINY_FILES:
        shutil.copyfile(STDLIB / name, folder / name)
    (folder / "tricky.py").write_bytes(TRICKY.encode())
    return folder


@pytest.fixture(scope="module")
def prepared(tiny_corpus, tmp_path_factory) -> Corpus:
    out = tmp_path_factory.mktemp("prepared") / "corpus"
    return prepare_corpus(tiny_corpus, out, vocab_size=600, log=lambda *_: None)


def test_split_is_stable_and_small():
    paths = [f"pkg{i}/mod{j}.py" for i in range(40) for j in range(50)]
    held = [p for p in paths if is_heldout(p)]
    assert held == [p for p in paths if is_heldout(p)]                # same answer every time
    assert 0.01 < len(held) / len(paths) < 0.03


def test_tokenizer_round_trips_and_keeps_specials_whole(prepared):
    tok = prepared.tokenizer
    assert tok.get_vocab_size() == 600
    assert [tok.token_to_id(s) for s in SPECIAL_TOKENS] == list(range(5))
    ids = tok.encode(TRICKY, add_special_tokens=False).ids
    assert tok.decode(ids, skip_special_tokens=False) == TRICKY
    prompt = f"{SPECIAL_TOKENS[2]}a = 1{SPECIAL_TOKENS[3]}\nb = 2{SPECIAL_TOKENS[4]}"
    ids = tok.encode(prompt, add_special_tokens=False).ids
    assert [i for i in ids if i < 5] == [FIM_BEGIN_ID, FIM_HOLE_ID, FIM_END_ID]
    assert tok.encode("x", add_special_tokens=True).ids[0] == BOS_ID


def test_corpus_cache_rebuilds_the_exact_file_bytes(prepared, tiny_corpus):
    again = load_corpus(prepared.root)
    by_path = dict(zip(again.paths, again.texts))
    assert by_path["tricky.py"] == TRICKY.encode()
    assert by_path["bisect.py"] == (tiny_corpus / "bisect.py").read_bytes()
    assert again.meta["train"]["files"] + again.meta["heldout"]["files"] == len(TINY_FILES) + 1
    assert again.meta["heldout"]["files"] >= 1


def test_holes_include_the_places_an_editor_asks_from():
    text = (STDLIB / "bisect.py").read_text()
    rng = np.random.default_rng(0)
    holes = [choose_hole(text, rng) for _ in range(400)]
    assert all(0 <= a <= b <= len(text) for a, b in holes)
    at_line_end = sum(text[b:b + 1] == "\n" and text[a - 1:a] not in ("\n", "") for a, b in holes)
    inside_line = sum("\n" not in text[a:b] and text[b:b + 1] not in ("\n", "") for a, b in holes)
    whole_lines = sum(text[a - 1:a] == "\n" and text[a:b].endswith("\n") for a, b in holes)
    after_colon_indent = sum(text[:a].rstrip(" ").endswith(":\n") and text[a - 1] == " " for a, b in holes)
    assert min(at_line_end, inside_line, whole_lines, after_colon_indent) > 5


def test_fim_samples_hold_prefix_suffix_middle_of_one_window(prepared):
    rng = np.random.default_rng(1)
    files = prepared.files(heldout=False)
    samples = make_samples(prepared, files, rng, row_len=129, fim_rate=1.0)
    fim = [s for s in samples if s[1] == FIM_BEGIN_ID]
    assert len(fim) > 10
    tok = prepared.tokenizer
    corpus_text = b"".join(prepared.texts).decode()
    for s in fim:
        assert len(s) <= 129 and s[0] == BOS_ID and s[-1] == EOS_ID
        hole, end = s.index(FIM_HOLE_ID), s.index(FIM_END_ID)
        prefix, suffix, middle = (tok.decode(x, skip_special_tokens=False)
                                  for x in (s[2:hole], s[hole + 1:end], s[end + 1:-1]))
        assert prefix + middle + suffix in corpus_text


def test_plain_samples_end_with_eos_only_at_the_end_of_a_file(prepared):
    rng = np.random.default_rng(2)
    samples = make_samples(prepared, prepared.files(heldout=False), rng, row_len=129, fim_rate=0.0)
    assert all(s[0] == BOS_ID and FIM_BEGIN_ID not in s for s in samples)
    assert sum(s[-1] == EOS_ID for s in samples) == len(prepared.files(heldout=False))


def test_pack_rows_never_splits_a_sample():
    lengths = (100, 30, 60, 10, 128, 5, 90)
    samples = [[10 + i] * n for i, n in enumerate(lengths)]
    rows = pack_rows(samples, row_len=128)
    assert len(rows) == 4                              # 100+10+5, 30+60, 128, 90
    for i, n in enumerate(lengths):                    # each sample whole, in one row
        holders = [r for r in rows if (r == 10 + i).any()]
        assert len(holders) == 1 and (holders[0] == 10 + i).sum() == n
    for r in rows:                                     # padding only at the end of a row
        filled = int((r >= 0).sum())
        assert (r[:filled] >= 0).all() and (r[filled:] == -1).all()


def test_worker_processes_build_the_epochs_the_loop_would_build(prepared):
    feeder = EpochFeeder(prepared, seed=3, row_len=129, fim_rate=0.5, workers=1)
    try:
        built_here = feeder.get(0)
        built_ahead = feeder.get(1)                    # by a worker, from the corpus cache folder
    finally:
        feeder.close()
    assert isinstance(feeder.pool, ProcessPoolExecutor)      # the worker did not fail over to a thread
    assert np.array_equal(built_here, epoch_rows(prepared, 3, 0, 129, 0.5))
    assert np.array_equal(built_ahead, epoch_rows(prepared, 3, 1, 129, 0.5))
    assert not np.array_equal(built_here, built_ahead)


def test_lr_warms_up_then_decays_to_the_floor():
    assert lr_factor(0, 0.0, 100) == pytest.approx(0.01)
    assert lr_factor(100, 0.0, 100) == pytest.approx(1.0)
    assert lr_factor(1000, 0.5, 100) == pytest.approx(0.55)
    assert lr_factor(5000, 1.0, 100) == pytest.approx(0.1)


def test_export_splits_fused_experts_into_deepseek_names():
    config = hf_config(PRESETS["tiny"], vocab_size=600)
    model = build_model(config, "auto")
    state = export_state_dict(model.state_dict(), config)
    experts, inter = config["n_routed_experts"], config["moe_intermediate_size"]
    for e in range(experts):
        for proj in ("gate", "up", "down"):
            assert f"model.layers.1.mlp.experts.{e}.{proj}_proj.weight" in state
    assert state["model.layers.1.mlp.experts.0.gate_proj.weight"].shape == (inter, config["hidden_size"])
    assert not any(k.endswith(("gate_up_proj", "experts.down_proj")) for k in state)
    assert "model.layers.0.mlp.gate_proj.weight" in state and "lm_head.weight" in state


def test_bad_arguments_exit_with_status_2(capsys, tmp_path):
    assert main(["--seq-len", "8", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("latent train: error:")
    assert main(["--corpus-cache", str(tmp_path / "nope"), "--out", str(tmp_path)]) == 2
    assert main(["--help"]) == 0


@pytest.mark.slow
def test_train_end_to_end_writes_a_folder_transformers_loads(tiny_corpus, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "run"
    argv = ["--corpus-dir", str(tiny_corpus), "--vocab-size", "600", "--preset", "tiny",
            "--seq-len", "128", "--batch-size", "8", "--minutes", "0.25", "--eval-every", "0.05",
            "--log-every", "5", "--threads", "2", "--out", str(out)]
    assert main(argv) == 0
    folder = out / "model"
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["README.md", "config.json", "generation_config.json", "model.safetensors",
                     "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "deepseek_v2" and config["q_lora_rank"] and config["n_shared_experts"] == 1

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = tok(TRICKY).input_ids
    assert ids[0] == BOS_ID and tok.decode(ids[1:]) == TRICKY

    # The saved weights are the training run's best weights, loaded under the fused layout.
    best = torch.load(out / "checkpoint.pt", weights_only=False)["best"]
    reference = build_model(config, "auto").eval()
    reference.load_state_dict(best)
    with torch.no_grad():
        x = torch.tensor([ids])
        assert torch.equal(model(x).logits, reference(x).logits)

    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    evals = [r["eval"] for r in log if "eval" in r]
    assert evals[-1]["loss"] < evals[0]["loss"]                   # it learned something
    card = (folder / "README.md").read_text()
    assert "latent train --corpus-dir" in card and "bits per byte" in card

    # --resume continues from the checkpoint instead of starting over.
    resume = argv[:argv.index("--minutes")] + ["--max-steps", str(evals[-1]["step"] + 3),
                                               "--log-every", "1", "--out", str(out), "--resume"]
    assert main(resume) == 0
    steps = [r["train"]["step"] for r in map(json.loads, (out / "log.jsonl").read_text().splitlines())
             if "train" in r]
    assert steps[-1] == evals[-1]["step"] + 3
